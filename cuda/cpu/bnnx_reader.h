// Reading a .bnnx export file (bnnctl/infer/bnnx.py writes it; see there for the format) without Python: the same
// checks in the same order, with the same one-sentence messages, so a file is accepted or refused alike by both.
// Plain C++17; the plan (xnor_plan.h) is built from what it returns.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace bnnx {

constexpr int kExportVersion = 3;

// Why a file was refused: not an export at all (or missing, unreadable), a version this reader does not read, or
// damaged (checksum, a header that disagrees with the data).
enum class Refusal { not_export, version, damaged };

class ExportError : public std::runtime_error {
 public:
  ExportError(Refusal refusal, const std::string& message) : std::runtime_error(message), refusal(refusal) {}
  Refusal refusal;
};

// One binary layer as exported (bnnctl/infer/exported.py ExportedLayer): the tensors its role carries are filled,
// the others empty.
struct Layer {
  std::string kind, role;  // "dense" | "conv"; "first" | "hidden" | "output"
  std::vector<int64_t> in_shape;
  int64_t out_features = 0, kernel_size = 0, padding = 0, pool = 0;
  std::vector<uint64_t> weight_bits;     // (out_features, ceil(fan_in / 64)): the signs, packed
  std::vector<int8_t> direction;         // binarizing layers: +1 or -1
  std::vector<int32_t> threshold;        // hidden layers, and the first with 8-bit inputs
  std::vector<float> float_threshold;    // the first layer
  std::vector<double> scale, shift;      // the output layer

  bool conv() const { return kind == "conv"; }
  int64_t fan_in() const;
  std::vector<int64_t> out_shape() const;  // conv: (C, H / pool, W / pool); dense: (out,)
};

struct Model {
  int version = 0;
  std::vector<int64_t> input_shape;
  std::string input_encoding;  // "uint8_scale" | "float"
  int64_t num_classes = 0;
  std::vector<Layer> layers;
  // The fitted input preprocessing the file carries (format version 3; empty kind: none): "scale", "standardize",
  // "zca" or "gcn_lcn". A per-pixel one ("scale", "standardize") comes as the float32 value of each byte 0..255.
  std::string preprocessing;
  std::vector<float> pixel_table;  // 256 values, or empty
  bool eight_bit() const { return input_encoding == "uint8_scale"; }
};

// The model in a file's bytes; `path` names it in messages. Throws ExportError.
Model read_export(const uint8_t* data, size_t size, const std::string& path);
// The same from a file (a missing, unreadable or folder path is refused as not an export).
Model load_export(const std::string& path);

}  // namespace bnnx
