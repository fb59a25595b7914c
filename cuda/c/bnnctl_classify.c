/* bnnctl-classify: classify images with an exported model (.bnnx), with no Python at run time.
 *
 *   bnnctl-classify MODEL.bnnx IMAGES [--logits] [--threads N] [--isa NAME] [--first-layer MODE] [--batch N]
 *
 * IMAGES: a .npy array (uint8 pixels, or float32/float64 values for models that take floats) of shape (N, ...)
 * with input-size values per image, or any other file read as raw uint8 pixels, input-size bytes per image. Pixels
 * given to a model that takes floats are preprocessed as its export says (standardize), where the export carries a
 * per-pixel preprocessing; otherwise that model needs its preprocessed floats.
 * Prints one line per image: its class, or with --logits its logits. Errors: one sentence on stderr, and bnnctl's
 * exit codes (2 bad input, 4 environment).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnnctl.h"

enum { MAX_DIMS = 16 };

typedef struct {
  unsigned char* data; /* the values, as stored */
  size_t count;        /* values in all */
  size_t item;         /* bytes per value: 1 (uint8), 4 (float32) or 8 (float64) */
  size_t per_image;    /* values per image as the file shapes them (0: not said, a raw file) */
} Images;

static int fail(int status, const char* message) {
  fprintf(stderr, "bnnctl-classify: error: %s\n", message);
  return status;
}

static unsigned char* read_file(const char* path, size_t* size, char* error, size_t error_size) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    snprintf(error, error_size, "%s cannot be read (%s).", path, strerror(errno));
    return NULL;
  }
  size_t capacity = 1 << 20, used = 0;
  unsigned char* data = malloc(capacity);
  for (size_t got; data && (got = fread(data + used, 1, capacity - used, f)) > 0;) {
    used += got;
    if (used == capacity) {
      unsigned char* grown = realloc(data, capacity *= 2);
      if (!grown) free(data);
      data = grown;
    }
  }
  const int failed = ferror(f);
  fclose(f);
  if (!data || failed) {
    snprintf(error, error_size, "%s cannot be read (%s).", path, data ? "read error" : "out of memory");
    free(data);
    return NULL;
  }
  *size = used;
  return data;
}

/* The value of 'key': in a .npy header (a Python dict literal), or NULL. */
static const char* npy_field(const char* header, const char* key) {
  char quoted[32];
  snprintf(quoted, sizeof quoted, "'%s'", key);
  const char* at = strstr(header, quoted);
  if (!at) return NULL;
  at = strchr(at + strlen(quoted), ':');
  if (!at) return NULL;
  ++at;
  while (*at == ' ') ++at;
  return at;
}

/* A .npy file (format versions 1 to 3, C order, little-endian uint8, float32 or float64). */
static int parse_npy(const char* path, unsigned char* data, size_t size, Images* out, char* error, size_t error_size) {
  size_t header_len, start;
  if (size < 10 || (data[6] != 1 && data[6] != 2 && data[6] != 3)) goto bad;
  if (data[6] == 1) {
    header_len = (size_t)data[8] | (size_t)data[9] << 8;
    start = 10;
  } else {
    if (size < 12) goto bad;
    header_len = (size_t)data[8] | (size_t)data[9] << 8 | (size_t)data[10] << 16 | (size_t)data[11] << 24;
    start = 12;
  }
  if (header_len > size - start) goto bad;
  char* header = malloc(header_len + 1);
  if (!header) return fail(BNNCTL_ENVIRONMENT, "the machine ran out of memory");
  memcpy(header, data + start, header_len);
  header[header_len] = '\0';
  const char* descr = npy_field(header, "descr");
  const char* order = npy_field(header, "fortran_order");
  const char* shape = npy_field(header, "shape");
  size_t dims[MAX_DIMS], ndim = 0;
  int ok = descr && order && shape && *shape == '(' && strncmp(order, "False", 5) == 0;
  if (ok) {
    if (strncmp(descr, "'|u1'", 5) == 0 || strncmp(descr, "'<u1'", 5) == 0) out->item = 1;
    else if (strncmp(descr, "'<f4'", 5) == 0) out->item = 4;
    else if (strncmp(descr, "'<f8'", 5) == 0) out->item = 8;
    else ok = 0;
  }
  for (const char* p = shape + 1; ok && *p != ')';) {
    char* end;
    while (*p == ' ' || *p == ',') ++p;
    if (*p == ')') break;
    errno = 0;
    const unsigned long long d = strtoull(p, &end, 10);
    if (end == p || errno || ndim == MAX_DIMS) ok = 0;
    else dims[ndim++] = (size_t)d, p = end;
  }
  free(header);
  if (!ok) {
    snprintf(error, error_size, "%s is a .npy file this program cannot read: it takes C-ordered uint8, float32 or "
             "float64 arrays.", path);
    return BNNCTL_BAD_INPUT;
  }
  size_t count = 1;
  for (size_t i = 0; i < ndim; ++i) count *= dims[i];
  out->per_image = 1;
  for (size_t i = 1; i < ndim; ++i) out->per_image *= dims[i];
  if (ndim < 2) out->per_image = 0;
  const size_t body = start + header_len;
  if ((size - body) / out->item < count) {
    snprintf(error, error_size, "%s is cut short: its header describes %zu values.", path, count);
    return BNNCTL_BAD_INPUT;
  }
  memmove(data, data + body, count * out->item);
  out->data = data;
  out->count = count;
  return BNNCTL_OK;
bad:
  snprintf(error, error_size, "%s starts like a .npy file but its header is damaged.", path);
  return BNNCTL_BAD_INPUT;
}

static int load_images(const char* path, Images* out, char* error, size_t error_size) {
  size_t size = 0;
  unsigned char* data = read_file(path, &size, error, error_size);
  if (!data) return BNNCTL_BAD_INPUT;
  if (size >= 6 && memcmp(data, "\x93NUMPY", 6) == 0) {
    const int status = parse_npy(path, data, size, out, error, error_size);
    if (status != BNNCTL_OK) free(data);
    return status;
  }
  out->data = data;
  out->count = size;
  out->item = 1;
  out->per_image = 0;
  return BNNCTL_OK;
}

static void usage(void) {
  fprintf(stderr, "usage: bnnctl-classify MODEL.bnnx IMAGES [--logits] [--threads N] [--isa NAME] "
                  "[--first-layer bitplane|float] [--batch N]\n");
}

int main(int argc, char** argv) {
  const char *model_path = NULL, *images_path = NULL;
  bnnctl_options options = {NULL, NULL, 0};
  int print_logits = 0;
  long batch = 256;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const int has_value = i + 1 < argc;
    if (strcmp(a, "--logits") == 0) print_logits = 1;
    else if (strcmp(a, "--threads") == 0 && has_value) options.threads = atoi(argv[++i]);
    else if (strcmp(a, "--isa") == 0 && has_value) options.isa = argv[++i];
    else if (strcmp(a, "--first-layer") == 0 && has_value) options.first_layer = argv[++i];
    else if (strcmp(a, "--batch") == 0 && has_value) batch = atol(argv[++i]);
    else if (a[0] == '-' && a[1] == '-') return usage(), fail(BNNCTL_BAD_INPUT, "unknown or incomplete option");
    else if (!model_path) model_path = a;
    else if (!images_path) images_path = a;
    else return usage(), fail(BNNCTL_BAD_INPUT, "too many arguments");
  }
  if (!model_path || !images_path || batch < 1 || options.threads < 0)
    return usage(), fail(BNNCTL_BAD_INPUT, "give a model, an images file, and positive counts");

  char error[1024];
  bnnctl_model* model;
  int status = bnnctl_open(model_path, &options, &model, error, sizeof error);
  if (status != BNNCTL_OK) return fail(status, error);
  Images images;
  status = load_images(images_path, &images, error, sizeof error);
  if (status != BNNCTL_OK) {
    bnnctl_close(model);
    return fail(status, error);
  }
  const size_t per_image = bnnctl_input_size(model), classes = bnnctl_num_classes(model);
  /* Raw pixels go through the _pixels calls (the export's per-pixel preprocessing, where the model takes floats). */
  const int pixels = images.item == 1;
  if (pixels && !bnnctl_takes_pixels(model)) {
    const char* kind = bnnctl_preprocessing(model);
    snprintf(error, sizeof error, "%s holds uint8 pixels, but this model takes float inputs (a float32 or float64 "
             ".npy file, preprocessed): its export carries %s%s.", images_path,
             kind ? kind : "no preprocessing", kind ? " preprocessing, which is not a per-pixel table" : "");
    status = BNNCTL_BAD_INPUT;
  } else if (!pixels && bnnctl_input_is_uint8(model)) {
    snprintf(error, sizeof error, "%s holds float values, but this model (first layer %s) takes 8-bit pixels "
             "(uint8).", images_path, bnnctl_first_layer(model));
    status = BNNCTL_BAD_INPUT;
  } else if ((images.per_image && images.per_image != per_image) || images.count % per_image) {
    snprintf(error, sizeof error, "%s holds %zu values (%zu per image), but this model takes %zu per image.",
             images_path, images.count, images.per_image ? images.per_image : images.count, per_image);
    status = BNNCTL_BAD_INPUT;
  }
  const size_t n = images.count / per_image;
  /* float64 values become float32 first, as bnnctl's engine does (.float()) */
  float* floats = images.item == 8 ? malloc((images.count ? images.count : 1) * sizeof(float)) : NULL;
  if (status == BNNCTL_OK && images.item == 8 && !floats) {
    snprintf(error, sizeof error, "the machine ran out of memory");
    status = BNNCTL_ENVIRONMENT;
  }
  if (floats)
    for (size_t i = 0; i < images.count; ++i) {
      double d;
      memcpy(&d, images.data + i * 8, 8);
      floats[i] = (float)d;
    }
  const unsigned char* values = floats ? (const unsigned char*)floats : images.data;
  const size_t stride = (floats ? 4 : images.item) * per_image;
  double* logits = malloc((size_t)batch * classes * sizeof(double));
  int32_t* predicted = malloc((size_t)batch * sizeof(int32_t));
  if (status == BNNCTL_OK && (!logits || !predicted)) {
    snprintf(error, sizeof error, "the machine ran out of memory");
    status = BNNCTL_ENVIRONMENT;
  }
  for (size_t i = 0; status == BNNCTL_OK && i < n; i += (size_t)batch) {
    const size_t count = n - i < (size_t)batch ? n - i : (size_t)batch;
    const void* first = values + i * stride;
    if (print_logits) {
      status = pixels ? bnnctl_logits_pixels(model, first, count, logits, error, sizeof error)
                      : bnnctl_logits(model, first, count, logits, error, sizeof error);
      for (size_t r = 0; status == BNNCTL_OK && r < count; ++r)
        for (size_t j = 0; j < classes; ++j) printf("%.17g%c", logits[r * classes + j], j + 1 < classes ? ' ' : '\n');
    } else {
      status = pixels ? bnnctl_classify_pixels(model, first, count, predicted, error, sizeof error)
                      : bnnctl_classify(model, first, count, predicted, error, sizeof error);
      for (size_t r = 0; status == BNNCTL_OK && r < count; ++r) printf("%d\n", (int)predicted[r]);
    }
  }
  free(logits);
  free(predicted);
  free(floats);
  free(images.data);
  bnnctl_close(model);
  if (status != BNNCTL_OK) return fail(status, error);
  return fflush(stdout) == 0 ? BNNCTL_OK : fail(BNNCTL_ENVIRONMENT, "the output could not be written");
}
