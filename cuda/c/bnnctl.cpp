// The C library (bnnctl.h) around the plan of cuda/cpu/xnor_plan.h, with OpenMP threads where the build has them.
#include "bnnctl.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../cpu/bnnx_reader.h"
#include "../cpu/xnor_plan.h"

namespace {

// The plan's loops on OpenMP threads, one contiguous chunk of the tasks per thread; on the calling thread alone in a
// build without OpenMP.
class OpenMpParallel final : public bnn_cpu::Parallel {
 public:
  explicit OpenMpParallel(int threads) : threads_(threads) {}

  void run(int64_t tasks, int64_t grain, const std::function<void(int64_t, int64_t)>& body) const override {
    if (tasks <= 0) return;
    (void)grain;  // without OpenMP every task runs here
#ifdef _OPENMP
    const int64_t wanted = threads_ > 0 ? threads_ : omp_get_max_threads();
    const int64_t threads = std::min<int64_t>(wanted, (tasks + grain - 1) / std::max<int64_t>(grain, 1));
    if (threads > 1 && !omp_in_parallel()) {
      std::exception_ptr failure;
      std::mutex failure_mutex;
#pragma omp parallel num_threads((int)threads)
      {
        const int64_t count = omp_get_num_threads(), chunk = (tasks + count - 1) / count;
        const int64_t begin = omp_get_thread_num() * chunk, end = std::min(tasks, begin + chunk);
        try {
          if (begin < end) body(begin, end);
        } catch (...) {  // an exception must not leave an OpenMP region: rethrown below
          std::lock_guard<std::mutex> lock(failure_mutex);
          if (!failure) failure = std::current_exception();
        }
      }
      if (failure) std::rethrow_exception(failure);
      return;
    }
#endif
    body(0, tasks);
  }

 private:
  int threads_;
};

void set_error(char* error, size_t size, const std::string& message) {
  if (!error || size == 0) return;
  const size_t n = std::min(size - 1, message.size());
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

// Runs f, turning exceptions into a status and a message.
template <typename F>
int guarded(char* error, size_t error_size, F f) {
  try {
    f();
    set_error(error, error_size, "");
    return BNNCTL_OK;
  } catch (const bnnx::ExportError& e) {
    set_error(error, error_size, e.what());
  } catch (const bnn_cpu::PlanError& e) {
    set_error(error, error_size, e.what());
  } catch (const std::bad_alloc&) {
    set_error(error, error_size, "the machine ran out of memory; use smaller batches.");
    return BNNCTL_ENVIRONMENT;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
    return BNNCTL_ENVIRONMENT;
  }
  return BNNCTL_BAD_INPUT;
}

}  // namespace

struct bnnctl_model {
  bnnctl_model(const bnnx::Model& m, bnn_cpu::FirstLayer mode, bnn_cpu::Isa isa, int threads)
      : plan(m, mode, isa), parallel(threads), preprocessing(m.preprocessing) {}
  bnn_cpu::Plan plan;
  OpenMpParallel parallel;
  std::string preprocessing;  // the export's fitted preprocessing, empty where it carries none
};

namespace {

int open_model(const bnnx::Model& m, const bnnctl_options* options, bnnctl_model** model) {
  bnn_cpu::FirstLayer mode = m.eight_bit() ? bnn_cpu::FirstLayer::bitplane : bnn_cpu::FirstLayer::floats;
  if (options && options->first_layer && !bnn_cpu::parse_first_layer(options->first_layer, &mode))
    throw bnn_cpu::PlanError(std::string("unknown first layer '") + options->first_layer +
                             "' (expected bitplane or float)");
  bnn_cpu::Isa isa = bnn_cpu::best_isa();
  if (options && options->isa) {
    if (!bnn_cpu::parse_isa(options->isa, &isa))
      throw bnn_cpu::PlanError(std::string("unknown CPU instruction set '") + options->isa +
                               "' (expected scalar, avx2 or avx512vpopcntdq)");
    if (!bnn_cpu::isa_supported(isa))
      throw bnn_cpu::PlanError(std::string("this CPU cannot run the ") + options->isa + " kernels");
  }
  *model = new bnnctl_model(m, mode, isa, options ? options->threads : 0);
  return BNNCTL_OK;
}

// The classes of n images (the first largest logit, as torch's argmax), from the logits logits_of(buffer) writes
// (a status): what bnnctl_classify and bnnctl_classify_pixels share.
template <typename LogitsOf>
int classify_with(bnnctl_model* model, size_t n, int32_t* classes, char* error, size_t error_size,
                  LogitsOf logits_of) {
  const size_t c = (size_t)model->plan.num_classes();
  std::vector<double> logits;
  try {
    logits.resize(n * c);
  } catch (const std::bad_alloc&) {
    set_error(error, error_size, "the machine ran out of memory; use smaller batches.");
    return BNNCTL_ENVIRONMENT;
  }
  const int status = logits_of(logits.data());
  if (status != BNNCTL_OK) return status;
  for (size_t i = 0; i < n; ++i) {
    const double* row = logits.data() + i * c;
    classes[i] = (int32_t)(std::max_element(row, row + c) - row);
  }
  return BNNCTL_OK;
}

}  // namespace

extern "C" {

int bnnctl_open(const char* path, const bnnctl_options* options, bnnctl_model** model, char* error,
                size_t error_size) {
  *model = nullptr;
  return guarded(error, error_size, [&] { open_model(bnnx::load_export(path), options, model); });
}

int bnnctl_open_memory(const void* data, size_t size, const char* name, const bnnctl_options* options,
                       bnnctl_model** model, char* error, size_t error_size) {
  *model = nullptr;
  return guarded(error, error_size, [&] {
    open_model(bnnx::read_export(static_cast<const uint8_t*>(data), size, name ? name : "<memory>"), options, model);
  });
}

void bnnctl_close(bnnctl_model* model) { delete model; }

size_t bnnctl_input_size(const bnnctl_model* model) { return (size_t)model->plan.input_size(); }

int bnnctl_input_is_uint8(const bnnctl_model* model) {
  return model->plan.first_layer() == bnn_cpu::FirstLayer::bitplane;
}

size_t bnnctl_num_classes(const bnnctl_model* model) { return (size_t)model->plan.num_classes(); }

const char* bnnctl_isa(const bnnctl_model* model) { return bnn_cpu::isa_name(model->plan.isa()); }

const char* bnnctl_first_layer(const bnnctl_model* model) {
  return bnn_cpu::first_layer_name(model->plan.first_layer());
}

int bnnctl_takes_pixels(const bnnctl_model* model) { return model->plan.takes_pixels(); }

const char* bnnctl_preprocessing(const bnnctl_model* model) {
  return model->preprocessing.empty() ? nullptr : model->preprocessing.c_str();
}

int bnnctl_logits(bnnctl_model* model, const void* inputs, size_t n, double* logits, char* error, size_t error_size) {
  return guarded(error, error_size, [&] { model->plan.run(inputs, (int64_t)n, logits, model->parallel); });
}

int bnnctl_classify(bnnctl_model* model, const void* inputs, size_t n, int32_t* classes, char* error,
                    size_t error_size) {
  return classify_with(model, n, classes, error, error_size,
                       [&](double* logits) { return bnnctl_logits(model, inputs, n, logits, error, error_size); });
}

int bnnctl_logits_pixels(bnnctl_model* model, const uint8_t* pixels, size_t n, double* logits, char* error,
                         size_t error_size) {
  return guarded(error, error_size, [&] {
    if (!model->plan.takes_pixels())
      throw bnn_cpu::PlanError(model->preprocessing.empty()
                                   ? "this export carries no preprocessing (it was written without its training "
                                     "images, or before format version 3), so give the model its preprocessed float "
                                     "inputs, or export it again with its training images at hand"
                                   : "this model's " + model->preprocessing + " preprocessing is not a per-pixel "
                                     "table, so give the model its preprocessed float inputs");
    model->plan.run_pixels(pixels, (int64_t)n, logits, model->parallel);
  });
}

int bnnctl_classify_pixels(bnnctl_model* model, const uint8_t* pixels, size_t n, int32_t* classes, char* error,
                           size_t error_size) {
  return classify_with(model, n, classes, error, error_size, [&](double* logits) {
    return bnnctl_logits_pixels(model, pixels, n, logits, error, error_size);
  });
}

}  // extern "C"
