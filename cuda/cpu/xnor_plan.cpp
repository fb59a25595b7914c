// The plan (xnor_plan.h): building it from an export, and running it.
#include "xnor_plan.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <mutex>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One clone per x86-64 level (see cuda/train/train_kernels.cpp on why not "avx2,fma"): the float first layer's
// loops vectorize across outputs, 8 or 16 wide where the CPU has it rather than SSE2's 4.
#define BNN_PLAN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BNN_PLAN_CLONES
#endif

namespace bnn_cpu {
namespace {

constexpr int kPlanes = 8;          // bit planes of an 8-bit input
constexpr int kInputLevels = 255;   // 2x/255 - 1 = (2x - 255) / 255
constexpr int64_t kMaxK = INT32_MAX - 1;  // the products are int32 (cuda/glue/op_checks.h)
constexpr int64_t kTaskWork = 1 << 15;    // words XORed and counted per task, at least, before a loop is split
constexpr int64_t kConvTaskRows = 64;     // GEMM rows per convolution task, about

int64_t words_for(int64_t k) { return (k + 63) / 64; }

template <typename T>
T* sized(std::vector<T>& buffer, int64_t size) {
  if ((int64_t)buffer.size() < size) buffer.resize((size_t)size);
  return buffer.data();
}

enum class Input { bitplane, floats, bits };

// One exported layer, prepared (see engine.py's _Layer and its subclasses for the same steps in torch).
struct Layer {
  bool conv = false, output = false;
  Input input = Input::bits;
  // The input per image: a convolution, and a dense layer on a convolution's output, read channels-last bits
  // (height, width, words of `channels`); other dense layers a flat row of `fan_in` values.
  bool channels_last = false;
  int64_t channels = 0, height = 1, width = 1;
  int64_t out = 0, kernel = 0, padding = 0, pool = 1, fan_in = 0;
  // The XNOR weights: rows of k bits (channels-last rows padded per tap to whole words), in pack_b_panels' layout.
  int64_t k = 0, words = 0;
  std::vector<uint64_t> panels;
  // Binarizing layers: bit = value >= bound, padded to a multiple of 64 entries with INT32_MAX (never).
  std::vector<int32_t> bound;
  std::vector<int32_t> correction;  // conv: (height * width, out), subtracted from the products
  std::vector<int32_t> direction;   // conv under a max-pool: multiplied after the max; empty: folded into weights
  int32_t pad_agreements = 0;       // dense on channels-last bits: the padding bits' agreements in every product
  // The float first layer. A convolution's +/-1 weights as floats (out, fan_in), the model's column order; a
  // dense layer's as sign bits (fan_in, words(out)), bit o of row j set where unit o's weight j is -1, 32 times
  // fewer bytes to read per image than floats (float_dense_rows). Its bounds; conv's directions.
  std::vector<float> weight_f, bound_f, direction_f;
  std::vector<uint64_t> negative;
  // The bit-plane first layer where the instruction set has the nibble-table kernel (nibble_dense, nibble_conv):
  // its +1 bits in the model's column order in pack_nibble_weights' layout, and nibble_row's offsets, -255 times
  // the sum of each row's +/-1 weights that meet the image: one row for a dense layer, one per pixel for a
  // convolution (the taps inside the image), nibble_stride entries each (out padded to a multiple of 64 with
  // zeros). Empty otherwise.
  std::vector<uint8_t> nibble_weights;
  std::vector<int32_t> nibble_offset;
  int64_t nibble_stride = 0;
  // The output layer: logits = pre-activation * scale + shift (scale over the pre-activation's own scale).
  std::vector<double> scale, shift;
  // The output per image: (out_h, out_w, words(out)) packed bits, out_words in all.
  int64_t out_h = 1, out_w = 1, out_words = 0;
};

bool bit_at(const uint64_t* row, int64_t j) { return (row[j / 64] >> (j % 64)) & 1; }

Layer prepare(const bnnx::Layer& e, size_t index, FirstLayer mode, Isa isa) {
  Layer L;
  L.conv = e.conv();
  L.output = e.role == "output";
  L.input = index > 0 ? Input::bits : (mode == FirstLayer::bitplane ? Input::bitplane : Input::floats);
  L.channels_last = e.in_shape.size() == 3;
  L.channels = e.in_shape[0];
  if (L.channels_last) {
    L.height = e.in_shape[1];
    L.width = e.in_shape[2];
  }
  L.out = e.out_features;
  L.kernel = e.kernel_size;
  L.padding = e.padding;
  L.pool = std::max<int64_t>(e.pool, 1);
  L.fan_in = e.fan_in();
  if (L.conv) {
    L.out_h = L.height / L.pool;
    L.out_w = L.width / L.pool;
  }
  L.out_words = L.out_h * L.out_w * words_for(L.out);
  // A unit with direction -1 fires below its threshold: without a max-pool between product and threshold its
  // weight row is negated; under one, the comparison is flipped after the max (engine.py's _Layer).
  const bool flipped = !L.output && e.pool <= 1;
  auto negated = [&](int64_t o) { return flipped && e.direction[o] < 0; };
  const int64_t row_words = words_for(L.fan_in);
  auto sign = [&](int64_t o, int64_t j) { return bit_at(e.weight_bits.data() + o * row_words, j) != negated(o); };
  const int64_t taps = L.conv ? L.kernel * L.kernel : L.height * L.width;

  if (L.input == Input::floats) {
    if (L.conv) {
      L.weight_f.resize((size_t)(L.out * L.fan_in));
      for (int64_t o = 0; o < L.out; ++o)
        for (int64_t j = 0; j < L.fan_in; ++j) L.weight_f[o * L.fan_in + j] = sign(o, j) ? 1.0f : -1.0f;
    } else {
      const int64_t out_words = words_for(L.out);
      L.negative.assign((size_t)(L.fan_in * out_words), 0);
      for (int64_t o = 0; o < L.out; ++o)
        for (int64_t j = 0; j < L.fan_in; ++j)
          if (!sign(o, j)) L.negative[j * out_words + o / 64] |= uint64_t{1} << (o % 64);
    }
    if (!L.output)
      for (int64_t o = 0; o < L.out; ++o) {
        L.bound_f.push_back((float)e.direction[o] * e.float_threshold[o]);
        if (!flipped) L.direction_f.push_back((float)e.direction[o]);
      }
  } else {
    // Channels-last rows: per tap, the channels padded to whole words with zero bits (-1, which agree with the
    // zero padding bits of the activations: pad_agreements per row); else the row as exported.
    const int64_t channel_words = words_for(L.channels);
    L.k = L.channels_last ? taps * channel_words * 64 : L.fan_in;
    if (L.k > kMaxK) throw PlanError("a layer of the model has " + std::to_string(L.k) + " inputs per unit, more "
                                     "than the int32 XNOR products can count");
    if (L.input == Input::bitplane && L.k * kInputLevels >= INT32_MAX)
      throw PlanError("the bit-plane first layer sums 255 x " + std::to_string(L.k) + " products per unit, past "
                      "int32; use the float first layer");
    L.words = words_for(L.k);
    const int64_t pad_agreements = L.channels_last ? taps * (channel_words * 64 - L.channels) : 0;
    // A convolution's weights per tap summed over the channels, and those of the taps that fall outside the image
    // at pixel px (zero padding): what the packed convolution's border correction and the nibble tables' offsets
    // are made of.
    auto tap_sums = [&](int64_t o) {
      std::vector<int64_t> sum((size_t)taps, 0);
      for (int64_t j = 0; j < L.fan_in; ++j) sum[j % taps] += sign(o, j) ? 1 : -1;
      return sum;
    };
    auto outside = [&](const std::vector<int64_t>& tap_sum, int64_t px) {
      int64_t total = 0;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t yy = px / L.width + t / L.kernel - L.padding, xx = px % L.width + t % L.kernel - L.padding;
        if (yy < 0 || yy >= L.height || xx < 0 || xx >= L.width) total += tap_sum[t];
      }
      return total;
    };
    const int64_t pixels = L.conv ? L.height * L.width : 1;
    if (L.input == Input::bitplane && (L.conv || !L.channels_last) && nibble_rows_available(isa)) {
      // The nibble tables replace the bit planes at every batch size (nibble_dense, nibble_conv): no panels.
      std::vector<uint64_t> model_rows((size_t)(L.out * row_words), 0);
      for (int64_t o = 0; o < L.out; ++o)
        for (int64_t j = 0; j < L.fan_in; ++j)
          if (sign(o, j)) model_rows[o * row_words + j / 64] |= uint64_t{1} << (j % 64);
      L.nibble_weights.resize((size_t)nibble_weight_bytes(L.out, L.fan_in));
      pack_nibble_weights(model_rows.data(), L.out, row_words, L.fan_in, L.nibble_weights.data());
      L.nibble_stride = (L.out + 63) / 64 * 64;
      L.nibble_offset.assign((size_t)(pixels * L.nibble_stride), 0);
      for (int64_t o = 0; o < L.out; ++o) {
        int64_t positive = 0;  // the row's +1 weights: its +/-1 weights sum to 2 positive - fan_in
        for (int64_t w = 0; w < row_words; ++w) positive += __builtin_popcountll(model_rows[o * row_words + w]);
        const std::vector<int64_t> tap_sum = L.conv ? tap_sums(o) : std::vector<int64_t>();
        for (int64_t px = 0; px < pixels; ++px) {
          const int64_t inside = 2 * positive - L.fan_in - (L.conv ? outside(tap_sum, px) : 0);
          L.nibble_offset[px * L.nibble_stride + o] = (int32_t)(-kInputLevels * inside);
        }
      }
    } else {
      std::vector<uint64_t> rows((size_t)(L.out * L.words), 0);
      for (int64_t o = 0; o < L.out; ++o) {
        uint64_t* row = rows.data() + o * L.words;
        for (int64_t j = 0; j < L.fan_in; ++j) {
          if (!sign(o, j)) continue;
          // The model's column order: channel, then tap (kh, kw; or y, x after the convolutions).
          const int64_t bit = L.channels_last ? (j % taps) * channel_words * 64 + j / taps : j;
          row[bit / 64] |= uint64_t{1} << (bit % 64);
        }
      }
      const int64_t nr = panel_shape(isa).cols, panels = (L.out + nr - 1) / nr;
      L.panels.resize((size_t)(panels * L.words * nr));
      pack_b_panels(isa, rows.data(), L.out, L.words, L.k, 0, panels, L.panels.data());
    }
    if (L.conv && L.nibble_weights.empty()) {
      // What the packed convolution adds to the model's pre-activation at each pixel: taps outside the image
      // read all-zero words (-1 for every channel) where the model reads 0, and the padding bits agree.
      const int64_t scale = L.input == Input::bitplane ? kInputLevels : 1;
      L.correction.assign((size_t)(pixels * L.out), 0);
      for (int64_t o = 0; o < L.out; ++o) {
        const std::vector<int64_t> tap_sum = tap_sums(o);
        for (int64_t px = 0; px < pixels; ++px)
          L.correction[px * L.out + o] = (int32_t)(scale * (pad_agreements - outside(tap_sum, px)));
      }
    } else if (!L.conv && L.channels_last) {
      L.pad_agreements = (int32_t)pad_agreements;
    }
    if (!L.output) {
      L.bound.assign((size_t)((L.out + 63) / 64 * 64), INT32_MAX);
      for (int64_t o = 0; o < L.out; ++o) {
        L.bound[o] = e.direction[o] * e.threshold[o] + (L.conv ? 0 : L.pad_agreements);
        if (L.conv && !flipped) L.direction.push_back(e.direction[o]);
      }
    }
  }
  if (L.output) {
    const double accumulator_scale = L.input == Input::bitplane ? kInputLevels : 1.0;
    for (int64_t o = 0; o < L.out; ++o) {
      L.scale.push_back(e.scale[o] / accumulator_scale);
      L.shift.push_back(e.shift[o]);
    }
  }
  return L;
}

// Float max that keeps a NaN, as torch's amax does.
inline float nan_max(float m, float v) { return (m != m || v > m || v != v) ? (m != m ? m : v) : m; }

}  // namespace

const char* first_layer_name(FirstLayer mode) { return mode == FirstLayer::bitplane ? "bitplane" : "float"; }

bool parse_first_layer(const std::string& name, FirstLayer* out) {
  if (name == "bitplane") return *out = FirstLayer::bitplane, true;
  if (name == "float") return *out = FirstLayer::floats, true;
  return false;
}

struct Plan::Impl {
  Isa isa;
  FirstLayer mode;
  int64_t input_size = 1, num_classes = 0;
  std::vector<int64_t> input_shape;
  std::vector<Layer> layers;

  std::mutex mutex;  // run() takes turns: the buffers below are shared
  std::vector<uint64_t> activations[2], planes, a_panels;
  std::vector<uint8_t> nibble_table_buffer;
  std::vector<int32_t> nibble_bias;
  std::vector<int32_t> products, values;
  std::vector<float> floats;
  std::vector<float> pixel_table, pixel_values;  // the export's per-pixel preprocessing; run_pixels' floats

  void run(const void* inputs, int64_t n, double* logits, const Parallel& parallel,
           std::vector<std::vector<uint64_t>>* trace);
  void run_locked(const void* inputs, int64_t n, double* logits, const Parallel& parallel,
                  std::vector<std::vector<uint64_t>>* trace);  // run() with the mutex held
  const uint64_t* bit_planes(const uint8_t* x, const Layer& L, int64_t n, const Parallel& parallel);
  void dense(const Layer& L, const uint64_t* a, int64_t n, bool planes, uint64_t* bits, int32_t* pre,
             const Parallel& parallel);
  void nibble_dense(const Layer& L, const uint8_t* x, int64_t n, uint64_t* bits, int32_t* pre,
                    const Parallel& parallel);
  void nibble_conv(const Layer& L, const uint8_t* x, int64_t n, uint64_t* bits, const Parallel& parallel);
  void gemm(const Layer& L, const uint64_t* a, int64_t m, int32_t* c, const Parallel& parallel);
  void conv(const Layer& L, const uint64_t* a, int64_t n, bool planes, uint64_t* bits, const Parallel& parallel);
  void float_dense(const Layer& L, const float* x, int64_t n, uint64_t* bits, float* pre, const Parallel& parallel);
  void float_conv(const Layer& L, const float* x, int64_t n, uint64_t* bits, const Parallel& parallel);
};

// The 8 bit planes of 8-bit inputs, packed: for a dense layer (n, 8, words(fan_in)), plane p of an image holding
// bit p of each value; for a convolution (8, n, height, width, channel words), channels-last.
const uint64_t* Plan::Impl::bit_planes(const uint8_t* x, const Layer& L, int64_t n, const Parallel& parallel) {
  if (!L.conv) {
    const int64_t values = L.fan_in, words = L.words;
    uint64_t* out = sized(planes, n * kPlanes * words);
    parallel.run(n, std::max<int64_t>(1, kTaskWork / (words + 1)), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const uint8_t* image = x + i * values;
        uint64_t* image_planes = out + i * kPlanes * words;
        std::memset(image_planes, 0, (size_t)(kPlanes * words) * sizeof(uint64_t));
        for (int64_t v = 0; v < values; v += 8) {
          uint64_t eight = 0;  // 8 values, value b in byte b
          const int64_t count = std::min<int64_t>(8, values - v);
          for (int64_t b = 0; b < count; ++b) eight |= (uint64_t)image[v + b] << (8 * b);
          for (int p = 0; p < kPlanes; ++p) {
            // Bit p of each byte gathered into the top byte: (m * 0x0102040810204080) >> 56, bit b from byte b.
            const uint64_t gathered = (((eight >> p) & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56;
            image_planes[p * words + v / 64] |= gathered << (v % 64);
          }
        }
      }
    });
    return out;
  }
  const int64_t c = L.channels, h = L.height, w = L.width, cw = words_for(c), pixels = h * w;
  const int64_t plane_words = n * pixels * cw;
  uint64_t* out = sized(planes, kPlanes * plane_words);
  parallel.run(n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      for (int p = 0; p < kPlanes; ++p)
        std::memset(out + p * plane_words + i * pixels * cw, 0, (size_t)(pixels * cw) * sizeof(uint64_t));
      for (int64_t ch = 0; ch < c; ++ch) {
        const uint8_t* channel = x + (i * c + ch) * pixels;
        for (int64_t px = 0; px < pixels; ++px)
          for (int p = 0; p < kPlanes; ++p)
            out[p * plane_words + (i * pixels + px) * cw + ch / 64] |= (uint64_t)((channel[px] >> p) & 1)
                                                                        << (ch % 64);
      }
    }
  });
  return out;
}

// The bit-plane first layer from nibble tables (nibble_row), a dense layer on images of 8-bit inputs x (n, fan_in):
// the planes' value (see dense), sum over p of 2^p (sum over i of (2 b_pi - 1) w_i) = sum over i of w_i (2 x_i - 255)
// = 4 S - 2 sum(x) - 255 sum(w), S the sum of x_i over the +1 weights: the same integer, so the same bits. One task
// per image and 64 outputs, threshold and packing in the kernel. Ahead of the planes at any batch, which do 8 XNOR
// rows per image.
void Plan::Impl::nibble_dense(const Layer& L, const uint8_t* x, int64_t n, uint64_t* bits, int32_t* pre,
                              const Parallel& parallel) {
  const int64_t out_words = words_for(L.out), table_bytes = nibble_table_bytes(L.fan_in);
  uint8_t* tables = sized(nibble_table_buffer, n * table_bytes);
  int32_t* bias = sized(nibble_bias, n);
  parallel.run(n, std::max<int64_t>(1, kTaskWork / L.fan_in), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      bias[i] = (int32_t)(-2 * nibble_tables(isa, x + i * L.fan_in, L.fan_in, tables + i * table_bytes));
  });
  parallel.run(n * out_words, std::max<int64_t>(1, kTaskWork / L.fan_in), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / out_words, w = t % out_words;
      const FewRowsOutput o{bits ? nullptr : pre + i * L.out, bits ? bits + i * out_words : nullptr,
                            bits ? L.bound.data() : nullptr, bits ? out_words : L.out, false};
      nibble_row(isa, tables + i * table_bytes, L.fan_in, L.nibble_weights.data(), 64 * w,
                 std::min(L.out, 64 * w + 64), L.nibble_offset.data(), bias[i], o);
    }
  });
}

// The bit-plane first layer from nibble tables, a convolution on images of 8-bit inputs x (n, C, H, W): per pixel,
// its im2col row in the model's (C, kh, kw) order with zeros outside the image (which add nothing to S), the
// value 4 S - 2 sum(x) - 255 times the weights of the taps inside the image (nibble_offset's row of the pixel),
// the planes' corrected value (see conv); then max-pool, direction and threshold as conv's epilogue. One task per
// pooled output row. The planes pad each tap's 3 colour channels to a 64-bit word and do 8 XNOR GEMMs: as much
// work as all the binary convolutions after them in the CIFAR-10 ConvNet.
void Plan::Impl::nibble_conv(const Layer& L, const uint8_t* x, int64_t n, uint64_t* bits, const Parallel& parallel) {
  const int64_t c = L.channels, h = L.height, w = L.width, p = L.pool, k = L.kernel, taps = k * k;
  const int64_t h2 = L.out_h, w2 = L.out_w, out_cw = words_for(L.out);
  parallel.run(n * h2, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint8_t> row((size_t)L.fan_in), tables((size_t)nibble_table_bytes(L.fan_in));
    std::vector<int32_t> values((size_t)(p * w * L.out)), scratch((size_t)L.out);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / h2, y0 = (t % h2) * p;
      for (int64_t r = 0; r < p * w; ++r) {
        const int64_t yy = y0 + r / w, xx = r % w;
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t t2 = 0; t2 < taps; ++t2) {
            const int64_t sy = yy + t2 / k - L.padding, sx = xx + t2 % k - L.padding;
            const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
            row[ch * taps + t2] = inside ? x[((i * c + ch) * h + sy) * w + sx] : 0;
          }
        const int32_t bias = (int32_t)(-2 * nibble_tables(isa, row.data(), L.fan_in, tables.data()));
        const FewRowsOutput o{values.data() + r * L.out, nullptr, nullptr, L.out, false};
        nibble_row(isa, tables.data(), L.fan_in, L.nibble_weights.data(), 0, L.out,
                   L.nibble_offset.data() + (yy * w + xx) * L.nibble_stride, bias, o);
      }
      const ConvThreshold th{values.data(), nullptr, L.direction.empty() ? nullptr : L.direction.data(),
                             L.bound.data(), p, w, L.out, (int)p};
      conv_threshold_rows(isa, th, 0, 1, scratch.data(), bits + (i * h2 + t % h2) * w2 * out_cw);
    }
  });
}

// The many-row XNOR GEMM: c (m, out) int32 from m rows of a (row-major) and the layer's weight panels.
void Plan::Impl::gemm(const Layer& L, const uint64_t* a, int64_t m, int32_t* c, const Parallel& parallel) {
  const int mr = panel_shape(isa).rows;
  const int64_t a_count = (m + mr - 1) / mr;
  uint64_t* ap = sized(a_panels, a_count * L.words * mr);
  parallel.run(a_count, std::max<int64_t>(1, kTaskWork / (L.words * mr)), [&](int64_t p0, int64_t p1) {
    pack_panels(a, m, L.words, L.k, mr, p0, p1, ap);
  });
  const PanelShape tile = xnor_tile(isa, L.words);
  for_each_tile(parallel, m, L.out, tile.rows, tile.cols, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    xnor_panels(isa, ap, L.panels.data(), L.words, L.k, m0, m1, n0, n1, c, L.out);
  });
}

// A dense layer on packed bits a: n rows (n images, or with `planes` n images of 8 plane rows each). Output: the
// threshold's bits (n, words(out)), or the int32 pre-activations `pre` (n, out) for the output layer.
void Plan::Impl::dense(const Layer& L, const uint64_t* a, int64_t n, bool planes, uint64_t* bits, int32_t* pre,
                       const Parallel& parallel) {
  const int64_t out_words = words_for(L.out);
  if (n <= kMaxFewRows) {
    // One call per 64 outputs (and per image of planes): the few-row kernel, threshold and packing included.
    const int rows = planes ? kPlanes : (int)n;
    const int64_t groups = planes ? n : 1;
    const int64_t grain = std::max<int64_t>(1, kTaskWork / (rows * 64 * L.words));
    parallel.run(groups * out_words, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t g = t / out_words, w = t % out_words;
        const FewRowsOutput o{bits ? nullptr : pre + g * L.out, bits ? bits + g * out_words : nullptr,
                              bits ? L.bound.data() : nullptr, bits ? out_words : L.out, planes};
        xnor_few_rows(isa, a + g * rows * L.words, rows, L.words, L.k, L.panels.data(), 64 * w,
                      std::min(L.out, 64 * w + 64), o);
      }
    });
    return;
  }
  const int64_t m = planes ? n * kPlanes : n;
  int32_t* c = (!planes && !bits) ? pre : sized(products, m * L.out);
  gemm(L, a, m, c, parallel);
  int32_t* value = c;
  if (planes) {  // each image's value: the sum over its planes p of 2^p times plane p's product
    value = bits ? sized(values, n * L.out) : pre;
    parallel.run(n, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        int32_t* v = value + i * L.out;
        const int32_t* d = c + i * kPlanes * L.out;
        for (int64_t j = 0; j < L.out; ++j) v[j] = d[j];
        for (int p = 1; p < kPlanes; ++p)
          for (int64_t j = 0; j < L.out; ++j) v[j] += d[p * L.out + j] * (1 << p);
      }
    });
  }
  if (!bits) return;
  parallel.run(n, std::max<int64_t>(1, kTaskWork / L.out), [&](int64_t r0, int64_t r1) {
    pack_ge_rows_i32(isa, value + r0 * L.out, L.bound.data(), r1 - r0, L.out, bits + r0 * out_words);
  });
}

// A convolution on channels-last packed bits a (n, height, width, channel words), or on the 8 bit planes of the
// input (8 such blocks). Each task takes a few pooled output rows of one image: the GEMM of their im2col rows into
// int32 in cache, then correction, max-pool, direction and threshold into the packed output.
void Plan::Impl::conv(const Layer& L, const uint64_t* a, int64_t n, bool planes, uint64_t* bits,
                      const Parallel& parallel) {
  const int64_t h = L.height, w = L.width, p = L.pool, cw = words_for(L.channels), out_cw = words_for(L.out);
  const int64_t h2 = L.out_h, w2 = L.out_w;
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(h2, kConvTaskRows / (p * w)));  // pooled rows per task
  const int64_t groups = (h2 + group - 1) / group, plane_words = n * h * w * cw;
  const int mr = panel_shape(isa).rows;
  const PanelShape tile = xnor_tile(isa, L.words);
  parallel.run(n * groups, 1, [&](int64_t t0, int64_t t1) {
    const int64_t most = group * p * w;  // GEMM rows of a task, at most
    std::vector<uint64_t> ap((size_t)((most + mr - 1) / mr * mr * L.words));
    std::vector<int32_t> d((size_t)(most * L.out)), sum(planes ? (size_t)(most * L.out) : 0), scratch((size_t)L.out);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / groups, first = (t % groups) * group, last = std::min(h2, first + group);
      const int64_t y0 = first * p, rows = (last - first) * p * w, row0 = (i * h + y0) * w;
      for (int q = 0; q < (planes ? kPlanes : 1); ++q) {
        const ConvInput x{a + q * plane_words, n, h, w, cw, (int)L.kernel, (int)L.padding};
        pack_conv_rows(x, mr, row0, rows, ap.data());
        for (int64_t n0 = 0; n0 < L.out; n0 += tile.cols)
          xnor_panels(isa, ap.data(), L.panels.data(), L.words, L.k, 0, rows, n0, std::min(L.out, n0 + tile.cols),
                      d.data(), L.out);
        if (!planes) continue;
        for (int64_t j = 0; j < rows * L.out; ++j) sum[j] = (q == 0 ? 0 : sum[j]) + d[j] * (1 << q);
      }
      const ConvThreshold th{planes ? sum.data() : d.data(), L.correction.data() + y0 * w * L.out,
                             L.direction.empty() ? nullptr : L.direction.data(), L.bound.data(),
                             (last - first) * p, w, L.out, (int)p};
      conv_threshold_rows(isa, th, 0, last - first, scratch.data(), bits + (i * h2 + first) * w2 * out_cw);
    }
  });
}

// y (n, out), the 64 columns of word wd (fewer in the last word) of x (n, k) times the +/-1 weights whose sign bits
// are `negative` (k, words): the baseline kernel's values to the bit. Each output sums its products over the inputs
// in order from +0.0, as float_gemm_block does, but the outputs run side by side in vector registers (one image per
// call gives the baseline a single dependent chain per output). A product with a +/-1 weight is the input with its
// sign bit flipped or not, exactly what the multiplication gives (a NaN's sign aside, which no threshold reads).
template <int Width>
inline void float_sign_block(const float* xi, const uint64_t* negative, int64_t k, int64_t words, int64_t wd,
                             int shift, int m, float* y) {
  float acc[Width] = {};  // a fixed width the compiler keeps in vector registers, one dependent chain each
  for (int64_t p = 0; p < k; ++p) {
    uint32_t a;
    std::memcpy(&a, xi + p, sizeof a);
    const uint64_t signs = negative[p * words + wd] >> shift;
    const uint32_t low = (uint32_t)signs, high = (uint32_t)(signs >> 32);  // 32-bit lanes' shifts
    for (int q = 0; q < Width; ++q) {
      const uint32_t product = a ^ (((q < 32 ? low : high) >> (q % 32)) << 31);
      float f;
      std::memcpy(&f, &product, sizeof f);
      acc[q] += f;
    }
  }
  std::copy(acc, acc + m, y);
}

BNN_PLAN_CLONES static void float_dense_rows(const float* x, const uint64_t* negative, int64_t k, int64_t n,
                                             int64_t out, int64_t wd, float* y) {
  const int64_t words = words_for(out), j0 = 64 * wd, cols = std::min<int64_t>(64, out - j0);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * k;
    float* yi = y + i * out + j0;
    if (cols == 64) {
      float_sign_block<64>(xi, negative, k, words, wd, 0, 64, yi);
    } else {
      for (int c = 0; c < cols; c += 8)
        float_sign_block<8>(xi, negative, k, words, wd, c, (int)std::min<int64_t>(8, cols - c), yi + c);
    }
  }
}

// The float first layer, dense: the baseline kernel's sums on the model's float inputs (n, fan_in), then the float
// threshold into bits, 64 outputs per task; or the pre-activations `pre` (n, out) of an output layer.
void Plan::Impl::float_dense(const Layer& L, const float* x, int64_t n, uint64_t* bits, float* pre,
                             const Parallel& parallel) {
  const int64_t out_words = words_for(L.out);
  float* y = pre ? pre : sized(floats, n * L.out);
  const bool sign_words = float_sign_word_available(isa);
  parallel.run(out_words, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t wd = w0; wd < w1; ++wd) {
      if (64 * wd + 64 <= L.out && sign_words)
        float_sign_word(isa, x, n, L.fan_in, L.negative.data(), words_for(L.out), wd, y, L.out);
      else
        float_dense_rows(x, L.negative.data(), L.fan_in, n, L.out, wd, y);
    }
    if (!bits) return;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t wd = w0; wd < w1; ++wd)
        pack_ge_rows_f32(y + i * L.out + 64 * wd, L.bound_f.data() + 64 * wd, 1,
                         std::min<int64_t>(64, L.out - 64 * wd), bits + i * out_words + wd);
  });
}

// The float first layer, a convolution on float inputs (n, C, H, W): im2col rows in the model's (C, kh, kw) order
// with zeros outside the image, the baseline kernel, max-pool (NaN kept), direction, float threshold.
void Plan::Impl::float_conv(const Layer& L, const float* x, int64_t n, uint64_t* bits, const Parallel& parallel) {
  const int64_t c = L.channels, h = L.height, w = L.width, p = L.pool, k = L.kernel, out_cw = words_for(L.out);
  const int64_t h2 = L.out_h, w2 = L.out_w;
  parallel.run(n * h2, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> cols((size_t)(p * w * L.fan_in)), y((size_t)(p * w * L.out)), v((size_t)L.out);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / h2, y0 = (t % h2) * p;
      for (int64_t r = 0; r < p * w; ++r) {
        const int64_t yy = y0 + r / w, xx = r % w;
        float* row = cols.data() + r * L.fan_in;
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t t2 = 0; t2 < k * k; ++t2) {
            const int64_t sy = yy + t2 / k - L.padding, sx = xx + t2 % k - L.padding;
            const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
            row[ch * k * k + t2] = inside ? x[((i * c + ch) * h + sy) * w + sx] : 0.0f;
          }
      }
      float_gemm_block(cols.data(), L.weight_f.data(), L.fan_in, 0, p * w, 0, L.out, y.data(), L.out);
      for (int64_t j2 = 0; j2 < w2; ++j2) {
        for (int64_t o = 0; o < L.out; ++o) {
          float m = y[(j2 * p) * L.out + o];
          for (int64_t dy = 0; dy < p; ++dy)
            for (int64_t dx = 0; dx < p; ++dx) m = nan_max(m, y[(dy * w + j2 * p + dx) * L.out + o]);
          v[o] = L.direction_f.empty() ? m : m * L.direction_f[o];
        }
        pack_ge_rows_f32(v.data(), L.bound_f.data(), 1, L.out, bits + ((i * h2 + t % h2) * w2 + j2) * out_cw);
      }
    }
  });
}

void Plan::Impl::run(const void* inputs, int64_t n, double* logits, const Parallel& parallel,
                     std::vector<std::vector<uint64_t>>* trace) {
  std::lock_guard<std::mutex> lock(mutex);
  run_locked(inputs, n, logits, parallel, trace);
}

void Plan::Impl::run_locked(const void* inputs, int64_t n, double* logits, const Parallel& parallel,
                            std::vector<std::vector<uint64_t>>* trace) {
  if (n <= 0) return;
  const uint64_t* a = nullptr;  // the layer's input bits
  for (size_t li = 0; li < layers.size(); ++li) {
    const Layer& L = layers[li];
    uint64_t* bits = L.output ? nullptr : sized(activations[li % 2], n * L.out_words);
    int32_t* pre = L.output ? sized(values, n * L.out) : nullptr;
    float* pre_f = nullptr;
    if (L.input == Input::floats) {
      const float* x = static_cast<const float*>(inputs);
      if (L.conv) {
        float_conv(L, x, n, bits, parallel);
      } else {
        pre_f = L.output ? sized(floats, n * L.out) : nullptr;
        float_dense(L, x, n, bits, pre_f, parallel);
      }
    } else if (L.input == Input::bitplane && !L.nibble_weights.empty()) {
      if (L.conv)
        nibble_conv(L, static_cast<const uint8_t*>(inputs), n, bits, parallel);
      else
        nibble_dense(L, static_cast<const uint8_t*>(inputs), n, bits, pre, parallel);
    } else {
      const bool planes = L.input == Input::bitplane;
      if (planes) a = bit_planes(static_cast<const uint8_t*>(inputs), L, n, parallel);
      if (L.conv)
        conv(L, a, n, planes, bits, parallel);
      else
        dense(L, a, n, planes, bits, pre, parallel);
    }
    if (!L.output) {
      if (trace) trace->emplace_back(bits, bits + n * L.out_words);
      a = bits;
      continue;
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < L.out; ++j) {
        const double v = pre_f ? (double)pre_f[i * L.out + j] : (double)(pre[i * L.out + j] - L.pad_agreements);
        logits[i * L.out + j] = v * L.scale[j] + L.shift[j];
      }
  }
}

Plan::Plan(const bnnx::Model& model, FirstLayer first_layer, Isa isa) : impl_(new Impl) {
  if (first_layer == FirstLayer::bitplane && !model.eight_bit())
    throw PlanError("the bitplane first layer needs a model trained on 8-bit images scaled as 2x/255 - 1; this one "
                    "takes other inputs, so use the float first layer.");
  impl_->isa = isa;
  impl_->mode = first_layer;
  impl_->input_shape = model.input_shape;
  for (int64_t d : model.input_shape) impl_->input_size *= d;
  impl_->num_classes = model.num_classes;
  if (first_layer == FirstLayer::floats) impl_->pixel_table = model.pixel_table;
  for (size_t i = 0; i < model.layers.size(); ++i)
    impl_->layers.push_back(prepare(model.layers[i], i, first_layer, isa));
}

Plan::~Plan() = default;

Isa Plan::isa() const { return impl_->isa; }
FirstLayer Plan::first_layer() const { return impl_->mode; }
int64_t Plan::input_size() const { return impl_->input_size; }
int64_t Plan::num_classes() const { return impl_->num_classes; }

std::vector<std::vector<int64_t>> Plan::trace_shapes() const {
  std::vector<std::vector<int64_t>> shapes;
  for (const Layer& L : impl_->layers) {
    if (L.output) continue;
    if (L.conv)
      shapes.push_back({L.out_h, L.out_w, words_for(L.out)});
    else
      shapes.push_back({words_for(L.out)});
  }
  return shapes;
}

void Plan::run(const void* inputs, int64_t n, double* logits, const Parallel& parallel,
               std::vector<std::vector<uint64_t>>* trace) {
  impl_->run(inputs, n, logits, parallel, trace);
}

bool Plan::takes_pixels() const { return impl_->mode == FirstLayer::bitplane || !impl_->pixel_table.empty(); }

void Plan::run_pixels(const uint8_t* pixels, int64_t n, double* logits, const Parallel& parallel,
                      std::vector<std::vector<uint64_t>>* trace) {
  if (impl_->mode == FirstLayer::bitplane) return impl_->run(pixels, n, logits, parallel, trace);
  std::lock_guard<std::mutex> lock(impl_->mutex);  // the mapped values are a buffer of the plan's
  const float* table = impl_->pixel_table.data();
  float* values = sized(impl_->pixel_values, n * impl_->input_size);
  for (int64_t i = 0; i < n * impl_->input_size; ++i) values[i] = table[pixels[i]];
  impl_->run_locked(values, n, logits, parallel, trace);
}

}  // namespace bnn_cpu
