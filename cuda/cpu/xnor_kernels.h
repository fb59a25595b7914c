// CPU kernels for bit packing, the XNOR-popcount GEMM and the plain float baseline (plain C++, no torch
// headers). The caller (cuda/glue/inference_ops.cpp) splits the work into blocks and runs them on torch's
// thread pool; each function here handles one block on one thread.
//
// Instruction sets are chosen at run time (the build targets a generic x86-64, or any other CPU through
// the scalar path): AVX-512 with VPOPCNTDQ, else AVX2 with a Harley-Seal popcount, else scalar.
// Packed layout: see cuda/bnn_cuda.h (the same on CPU and GPU).
#pragma once
#include <cstdint>

namespace bnn_cpu {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
// Parses "scalar" | "avx2" | "avx512vpopcntdq"; returns false on an unknown name.
bool parse_isa(const char* name, Isa* out);
// Whether this CPU (and this build) can run the kernels of `isa`.
bool isa_supported(Isa isa);
Isa best_isa();

// Packs rows [0, rows) of a row-major float matrix x (rows, k) into out (rows, ceil(k / 64)): bit set when
// x >= 0. The test is made on the bits of x (sign and NaN), so it is exact whatever the floating-point
// mode: a negative denormal stays -1 under flush-to-zero / denormals-are-zero, -0.0 is +1, NaN is -1.
void pack_rows(Isa isa, const float* x, int64_t rows, int64_t k, uint64_t* out);
// The same for float64 (no conversion to float32 first, which would turn -1e-300 into -0.0 = +1).
void pack_rows_f64(const double* x, int64_t rows, int64_t k, uint64_t* out);

// The threshold form: bit j of row r set when value[r * n + j] >= bound[j] (value (rows, n) row-major),
// packed like pack_rows into out (rows, ceil(n / 64)). Exact comparisons in the values' own type.
void pack_ge_rows_i32(Isa isa, const int32_t* value, const int32_t* bound, int64_t rows, int64_t n, uint64_t* out);
void pack_ge_rows_f32(const float* value, const float* bound, int64_t rows, int64_t n, uint64_t* out);

// The XNOR GEMM on panels. Each instruction set has a block shape: a micro-kernel computes `rows` x `cols`
// outputs from one panel of a's rows and one panel of b's rows.
struct PanelShape {
  int rows, cols;
};
PanelShape panel_shape(Isa isa);

// Copies panels [p0, p1) of `width` rows of src (rows, words) into out, word-interleaved: panel p starts at
// out + p * words * width and holds word w of its row i at [w * width + i]. Bits past k are cleared and rows
// past `rows` are zero, so the GEMM ignores whatever lies in the padding bits of src.
void pack_panels(const uint64_t* src, int64_t rows, int64_t words, int64_t k, int width, int64_t p0, int64_t p1,
                 uint64_t* out);

// A binary convolution's input: channels-last packed words (images, height, width, channel_words), read as the
// rows of its im2col matrix: row (image, y, x) holds the kernel x kernel taps around (y, x) in (kh, kw) order,
// each tap's channel words, and all-zero words for taps outside the image (stride 1).
struct ConvInput {
  const uint64_t* words;
  int64_t images, height, width, channel_words;
  int kernel, padding;
};
// pack_panels for that im2col matrix, gathered straight from the image: no im2col copy in memory.
void pack_conv_panels(const ConvInput& x, int width, int64_t p0, int64_t p1, uint64_t* out);
// The same for im2col rows [row0, row0 + rows) only, into panels numbered from 0 (row row0 + p * width + i is row i
// of panel p; rows past the range are zero).
void pack_conv_rows(const ConvInput& x, int width, int64_t row0, int64_t rows, uint64_t* out);

// Panels [p0, p1) of b's rows for isa's micro-kernel: panel_shape(isa).cols rows each, in pack_panels' layout or,
// for AVX2, 32-bit half-words interleaved (half h of word w of the panel's row i at uint32 [(w * 2 + h) * cols + i]).
// Either way a panel takes words * cols uint64, its padding bits and missing rows zero.
void pack_b_panels(Isa isa, const uint64_t* src, int64_t rows, int64_t words, int64_t k, int64_t p0, int64_t p1,
                   uint64_t* out);

// The GEMM's tile for rows of `words` words: the caller's threads take tiles, and xnor_panels computes one.
PanelShape xnor_tile(Isa isa, int64_t words);

// c[i * ldc + j] = k - 2 * popcount(a_i XOR b_j) for i in [m0, m1), j in [n0, n1), from a's rows packed in
// panels of panel_shape(isa).rows (pack_panels, pack_conv_panels) and b's by pack_b_panels; m0 and n0 are
// multiples of the panel shape.
void xnor_panels(Isa isa, const uint64_t* a_panels, const uint64_t* b_panels, int64_t words, int64_t k, int64_t m0,
                 int64_t m1, int64_t n0, int64_t n1, int32_t* c, int64_t ldc);

// ---- Few rows: the GEMV-shaped XNOR product, with the layer's epilogue on its outputs -------------------------
// For 1 to kMaxFewRows rows of a, as they are (row-major, no panels), against b's panels (pack_b_panels): each b
// panel is read once for all the rows, and the outputs go, while in registers, either to int32 values or through
// the threshold straight into packed bits (as the next layer reads them).
constexpr int kMaxFewRows = 8;

struct FewRowsOutput {
  // values[r * ld + j] = k - 2 * popcount(a_r XOR b_j), when bound is null.
  int32_t* values;
  // Else bit j % 64 of bits[r * ld + j / 64] set when that value >= bound[j]; bound has an entry for every column
  // below n1 rounded up to a multiple of 64 (the kernels read whole vectors of it), and bits past n1 are cleared.
  uint64_t* bits;
  const int32_t* bound;
  int64_t ld;
  // a's rows are bit planes 0, 1, ... of one input: a single output row, value = sum over r of 2^r times row r's.
  bool planes;
};

// Columns [n0, n1) (n0 a multiple of 64) of rows [0, rows) of a (rows, words), whose bits past k are zero (as pack
// and pack_ge leave them), times b's panels for isa.
void xnor_few_rows(Isa isa, const uint64_t* a, int rows, int64_t words, int64_t k, const uint64_t* b_panels,
                   int64_t n0, int64_t n1, const FewRowsOutput& out);

// ---- One image of 8-bit inputs: the bit-plane first layer's values by nibble tables ---------------------------
// A dense first layer on 8-bit inputs x (the layer the bit-plane mode runs as 8 XNOR rows per image) computes, per
// output j, S_j = the sum of x_i over the inputs i whose weight bit (j, i) is set, by table lookup: the inputs go
// in groups of 4, each with two 16-entry tables holding, for every subset of the group, the sum of its inputs' low
// nibbles and of their high nibbles (at most 60, a byte); output j's 4 weight bits of a group index both (vpshufb:
// 32 outputs per instruction). S_j = 16 * highs + lows, an exact integer, so any order of the sums gives the
// same value; by instruction count about 4 times fewer than the 8 planes' popcounts. Instruction sets without a kernel
// for it (nibble_rows_available) keep the bit planes.
constexpr int64_t kNibbleInputs = 16;   // inputs per step of the kernel: x and the weights padded with zeros to it
constexpr int64_t kNibbleOutputs = 32;  // outputs per block of the weights' layout
bool nibble_rows_available(Isa isa);
inline int64_t nibble_inputs(int64_t k) { return (k + kNibbleInputs - 1) / kNibbleInputs * kNibbleInputs; }
// Bytes of pack_nibble_weights' layout for `out` outputs of k inputs.
inline int64_t nibble_weight_bytes(int64_t out, int64_t k) {
  return (out + kNibbleOutputs - 1) / kNibbleOutputs * kNibbleOutputs * nibble_inputs(k) / 8;
}
// Bytes of nibble_tables' output for k inputs.
inline int64_t nibble_table_bytes(int64_t k) { return nibble_inputs(k) / 4 * 32; }
// rows (out, words), bit i of row j the weight bit (j, i), k inputs, into blocks of kNibbleOutputs outputs: byte o
// of octet q of block b (dst[(b * nibble_inputs(k) / 8 + q) * 32 + o]) holds output 32b + o's bits of inputs
// 8q .. 8q + 7, input 8q + i at bit i; bits past k and outputs past `out` are zero.
void pack_nibble_weights(const uint64_t* rows, int64_t out, int64_t words, int64_t k, uint8_t* dst);
// The tables of one image's k values (nibble_table_bytes(k)): group g's 32 bytes are its 16 sums of low nibbles,
// then its 16 sums of high nibbles, entry m summing the inputs 4g + i with bit i of m set. Returns the sum of x.
int64_t nibble_tables(Isa isa, const uint8_t* x, int64_t k, uint8_t* tables);
// Columns [n0, n1) (n0 a multiple of kNibbleOutputs) of one image, from its tables and pack_nibble_weights' layout:
// value_j = 4 * S_j + offset[j] + bias (the bit-plane layer's value with offset_j = -255 times the sum of row j's
// +/-1 weights and bias = -2 times the sum of x; see xnor_plan.cpp), computed modulo 2^32 and so exact wherever
// the value fits int32, into row 0 of `out` (FewRowsOutput; `planes` is ignored). offset has an entry for every
// column below n1 rounded up to a multiple of kNibbleOutputs.
void nibble_row(Isa isa, const uint8_t* tables, int64_t k, const uint8_t* weights, int64_t n0, int64_t n1,
                const int32_t* offset, int32_t bias, const FewRowsOutput& out);

// ---- The float first layer, dense: one 64-output word of the baseline kernel's sums -----------------------------
// y[i * ldy + j] for rows i < n of x (n, k) and the 64 outputs j of word wd: the sum over p in order, from +0.0, of
// x[i, p] with its sign flipped where bit j of negative[p * words + wd] is set (the product with a -1 weight): the
// baseline kernel's float32 values to the bit, the outputs side by side in vector lanes. Instruction sets without a
// kernel for it (float_sign_word_available) leave it to the plan's portable loop.
bool float_sign_word_available(Isa isa);
void float_sign_word(Isa isa, const float* x, int64_t n, int64_t k, const uint64_t* negative, int64_t words,
                     int64_t wd, float* y, int64_t ldy);

// A binary convolution's epilogue on its XNOR products d (images, height, width, channels), channels-last
// int32: out bit (image, i2, j2, ch) = direction[ch] * max over the pool x pool window at (i2, j2) of
// (d - correction[pixel, ch]) >= bound[ch], packed along the channels like pack_ge. correction (height * width,
// channels) and direction (channels) may be null (none, +1); a ragged edge past a whole window is dropped.
struct ConvThreshold {
  const int32_t* products;
  const int32_t* correction;
  const int32_t* direction;
  const int32_t* bound;
  int64_t height, width, channels;
  int pool;
};
// Output rows [r0, r1) (a row: image * (height / pool) + i2) into out (images, height / pool, width / pool,
// ceil(channels / 64)); scratch holds `channels` int32.
void conv_threshold_rows(Isa isa, const ConvThreshold& t, int64_t r0, int64_t r1, int32_t* scratch, uint64_t* out);

// The CPU stand-in for the paper's unoptimised float kernel: c[i * ldc + j] = dot(a_i, b_j) over k for
// i in [m0, m1), j in [n0, n1), a (m, k) and b (n, k) row-major; a plain register-blocked loop.
void float_gemm_block(const float* a, const float* b, int64_t k, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                      float* c, int64_t ldc);

}  // namespace bnn_cpu
