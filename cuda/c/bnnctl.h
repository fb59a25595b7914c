/* bnnctl: run an exported binarized network (a .bnnx file from `bnnctl export`) from C, without Python.
 *
 * The library checks the file as bnnctl does (checksum, every header field against the data; a damaged file is
 * refused with one sentence), prepares the whole network once (weights in the XNOR kernels' layout, thresholds,
 * buffers) and classifies a batch of images in one call, with the same integers, logits and classes as bnnctl's
 * packed engine. Build: cmake -S cuda -B build/c && cmake --build build/c (libbnnctl and bnnctl-classify).
 *
 *     bnnctl_model* model;
 *     char error[512];
 *     if (bnnctl_open("model.bnnx", NULL, &model, error, sizeof error) != BNNCTL_OK) {
 *       fprintf(stderr, "%s\n", error);
 *       return 2;
 *     }
 *     int32_t classes[64];
 *     bnnctl_classify(model, pixels, 64, classes, error, sizeof error);  // 64 images of 8-bit pixels
 *     bnnctl_close(model);
 *
 * Inputs: models trained on 8-bit images scaled as 2x/255 - 1 (the MNIST MLP) take the raw pixels as uint8;
 * others take the float32 values the model was trained on (after its preprocessing), or, through the _pixels calls,
 * raw uint8 pixels where the export carries a per-pixel preprocessing (standardize: each byte's value, as
 * bnnctl computed it, so the results are bnnctl's to the bit). One model's calls take turns
 * (its buffers are reused); open one model per thread to run in parallel, or let a call use several threads.
 */
#ifndef BNNCTL_H
#define BNNCTL_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define BNNCTL_API
#else
#define BNNCTL_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes, bnnctl's exit codes: 0 done; 2 bad input (a file that is no export or is damaged, a model or
 * input the call cannot take); 4 the environment failed (no memory). */
enum { BNNCTL_OK = 0, BNNCTL_BAD_INPUT = 2, BNNCTL_ENVIRONMENT = 4 };

typedef struct bnnctl_model bnnctl_model;

/* How to run a model; a NULL pointer or zeroed fields take the defaults. */
typedef struct {
  /* "bitplane" (XNOR on the 8 bit planes of 8-bit images), "float" (the float kernel on float32 inputs), or NULL:
   * bitplane for models of 8-bit images, else float. */
  const char* first_layer;
  /* "scalar", "avx2", "avx512vpopcntdq", or NULL: the best this CPU runs. */
  const char* isa;
  /* Threads per call; 0: OpenMP's default (OMP_NUM_THREADS, else every core); 1 without OpenMP. */
  int threads;
} bnnctl_options;

/* Reads, checks and prepares the export at path. On success *model is set; else *model is NULL and error (when
 * not NULL) holds the reason, one sentence, NUL-terminated within error_size bytes. */
BNNCTL_API int bnnctl_open(const char* path, const bnnctl_options* options, bnnctl_model** model, char* error,
                           size_t error_size);
/* The same from a file's bytes already in memory; name names it in messages. */
BNNCTL_API int bnnctl_open_memory(const void* data, size_t size, const char* name, const bnnctl_options* options,
                                  bnnctl_model** model, char* error, size_t error_size);
BNNCTL_API void bnnctl_close(bnnctl_model* model);

/* Values per image, their type (1: uint8 pixels, 0: float32), and the number of classes. */
BNNCTL_API size_t bnnctl_input_size(const bnnctl_model* model);
BNNCTL_API int bnnctl_input_is_uint8(const bnnctl_model* model);
BNNCTL_API size_t bnnctl_num_classes(const bnnctl_model* model);
/* The instruction set and first layer the model runs with ("avx2", "bitplane", ...). */
BNNCTL_API const char* bnnctl_isa(const bnnctl_model* model);
BNNCTL_API const char* bnnctl_first_layer(const bnnctl_model* model);

/* The float64 logits of n images (inputs: n * input_size values) into logits (n * num_classes). */
BNNCTL_API int bnnctl_logits(bnnctl_model* model, const void* inputs, size_t n, double* logits, char* error,
                             size_t error_size);
/* Their classes (the first largest logit), into classes (n). */
BNNCTL_API int bnnctl_classify(bnnctl_model* model, const void* inputs, size_t n, int32_t* classes, char* error,
                               size_t error_size);

/* Whether the model takes raw uint8 pixels through the _pixels calls: 8-bit models, and float-input models whose
 * export carries a per-pixel preprocessing. */
BNNCTL_API int bnnctl_takes_pixels(const bnnctl_model* model);
/* The export's fitted preprocessing ("scale", "standardize", "zca", "gcn_lcn"), or NULL where it carries none. */
BNNCTL_API const char* bnnctl_preprocessing(const bnnctl_model* model);
/* bnnctl_logits and bnnctl_classify on n images of raw uint8 pixels (n * input_size bytes), preprocessed as the
 * export says; a model that cannot take pixels (bnnctl_takes_pixels) is refused (BNNCTL_BAD_INPUT). */
BNNCTL_API int bnnctl_logits_pixels(bnnctl_model* model, const uint8_t* pixels, size_t n, double* logits,
                                    char* error, size_t error_size);
BNNCTL_API int bnnctl_classify_pixels(bnnctl_model* model, const uint8_t* pixels, size_t n, int32_t* classes,
                                      char* error, size_t error_size);

#ifdef __cplusplus
}
#endif

#endif /* BNNCTL_H */
