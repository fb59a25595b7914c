// The .bnnx reader: bnnctl/infer/bnnx.py's read_export and _HeaderReader, check for check and message for message.
#include "bnnx_reader.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "bnnx_json.h"
#include "sha256.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the .bnnx reader reads the file's little-endian tensors in place: a little-endian machine is needed"
#endif

namespace bnnx {
namespace {

const char kMagic[8] = {'B', 'N', 'N', 'C', 'T', 'L', 'X', '\0'};
constexpr size_t kFixed = 16, kDigest = 32, kAlign = 64;
constexpr int kInputLevels = 255;
const char* const kFormat = "bnnctl-export";
// Sizes past this are refused before any arithmetic on them could overflow (no file is that large).
constexpr int64_t kTooLarge = int64_t{1} << 62;

const std::set<std::string> kLayerFields = {"kind", "role", "in_shape", "out_features", "kernel_size", "padding",
                                            "pool", "tensors"};
const std::set<std::string> kEntryFields = {"dtype", "shape", "offset", "nbytes"};

std::string join(const std::set<std::string>& names) {  // sorted, as Python's sorted() of str
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::set<std::string> keys(const Json& object) {
  std::set<std::string> out;
  for (const auto& member : object.members) out.insert(member.first);
  return out;
}

Json int_json(int64_t v) {
  Json j;
  j.type = Json::Type::integer;
  j.integer = v;
  return j;
}

Json string_json(const std::string& s) {
  Json j;
  j.type = Json::Type::string;
  j.text = s;
  return j;
}

// The tensor names a header's tensors field holds, as Python's repr of sorted(field) (or of the field itself, where it
// is not an object).
std::string found_names(const Json& tensors) {
  if (tensors.type != Json::Type::object) return py_repr(tensors);
  Json sorted;
  sorted.type = Json::Type::array;
  for (const auto& name : keys(tensors)) sorted.items.push_back(string_json(name));
  return py_repr(sorted);
}

ExportError damaged(const std::string& path, const std::string& what) {
  return ExportError(Refusal::damaged, path + " is a damaged bnnctl export file: " + what +
                                           "; export the run again or restore it from a copy.");
}

int64_t words_for(int64_t k) { return (k + 63) / 64; }

// The tensors each role carries, their dtypes and item sizes.
struct TensorKind {
  const char* name;
  const char* dtype;
  int64_t itemsize;
};
const TensorKind kTensorKinds[] = {{"weight_bits", "int64", 8},       {"direction", "int8", 1},
                                   {"threshold", "int32", 4},         {"float_threshold", "float32", 4},
                                   {"scale", "float64", 8},           {"shift", "float64", 8}};

std::set<std::string> tensor_names(const std::string& role, const std::string& encoding) {
  if (role == "output") return {"weight_bits", "scale", "shift"};
  if (role == "hidden") return {"weight_bits", "direction", "threshold"};
  std::set<std::string> names = {"weight_bits", "direction", "float_threshold"};
  if (encoding == "uint8_scale") names.insert("threshold");
  return names;
}

class HeaderReader {
 public:
  HeaderReader(const std::string& path, const Json& header, const uint8_t* body, size_t body_size, int version)
      : path_(path), h_(header), body_(body), body_size_((int64_t)body_size), version_(version) {}

  Model read() {
    if (h_.type != Json::Type::object) throw fail("its header is not a JSON object");
    std::set<std::string> expected = {"format", "version", "bnnctl", "input_shape", "input_encoding",
                                      "num_classes", "info", "layers"};
    if (version_ >= 2) expected.insert("data");
    if (version_ >= 3) expected.insert("preprocessing");
    const std::set<std::string> found = keys(h_);
    if (found != expected) {
      std::set<std::string> missing, unknown;
      for (const auto& name : expected)
        if (!found.count(name)) missing.insert(name);
      for (const auto& name : found)
        if (!expected.count(name)) unknown.insert(name);
      throw fail(missing.empty() ? "its header has unknown fields " + join(unknown)
                                 : "its header lacks " + join(missing));
    }
    const Json& format = *h_.find("format");
    if (!py_equal(format, string_json(kFormat)))
      throw fail("its header names the format " + py_repr(format) + ", not '" + kFormat + "'");
    const Json& version = *h_.find("version");
    if (!py_equal(version, int_json(version_)))
      throw fail("its header says format version " + py_repr(version) + " where the file's preamble says " +
                 std::to_string(version_));
    Model model;
    model.version = version_;
    model.input_shape = shape_field(*h_.find("input_shape"), "the input shape");
    const Json& encoding = *h_.find("input_encoding");
    if (!py_equal(encoding, string_json("uint8_scale")) && !py_equal(encoding, string_json("float")))
      throw fail("the input encoding " + py_repr(encoding) + " is not one of uint8_scale, float");
    model.input_encoding = encoding.text;
    model.num_classes = int_field(*h_.find("num_classes"), "the number of classes", 1);
    if (h_.find("info")->type != Json::Type::object) throw fail("its info field is not a JSON object");
    const Json* data = h_.find("data");
    if (data && data->type != Json::Type::null && data->type != Json::Type::object)
      throw fail("its data field is not a JSON object");
    const Json& layers = *h_.find("layers");
    if (layers.type != Json::Type::array || layers.items.empty()) throw fail("its header lists no layers");
    const std::vector<int64_t>* previous_out = nullptr;
    std::vector<int64_t> previous;
    const size_t count = layers.items.size();
    for (size_t i = 0; i < count; ++i) {
      model.layers.push_back(layer(layers.items[i], i, count, model, previous_out));
      previous = model.layers.back().out_shape();
      previous_out = &previous;
    }
    if (version_ >= 3) preprocessing(*h_.find("preprocessing"), data, model);
    if (model.layers.back().out_features != model.num_classes)
      throw fail("its last layer has " + std::to_string(model.layers.back().out_features) +
                 " outputs but the header says " + std::to_string(model.num_classes) + " classes");
    if (offset_ != body_size_)
      throw fail("its data section holds " + std::to_string(body_size_) + " bytes where its header describes " +
                 std::to_string(offset_));
    return model;
  }

 private:
  ExportError fail(const std::string& what) const { return damaged(path_, what); }

  int64_t int_field(const Json& v, const std::string& what, int64_t minimum) const {
    if (!v.is_int() || v.integer < minimum) {
      if (v.huge && v.integer > 0) throw fail(what + " is " + py_repr(v) + ", more than this reader can hold");
      throw fail(what + " is " + py_repr(v) + ", not an integer >= " + std::to_string(minimum));
    }
    return v.integer;
  }

  std::vector<int64_t> shape_field(const Json& v, const std::string& what) const {
    bool ok = v.type == Json::Type::array && !v.items.empty();
    std::vector<int64_t> shape;
    for (const Json& d : ok ? v.items : std::vector<Json>()) {
      if (d.huge && d.integer > 0) throw fail(what + " is " + py_repr(v) + ", more than this reader can hold");
      ok = ok && d.is_int() && d.integer > 0;
      shape.push_back(d.integer);
    }
    if (!ok) throw fail(what + " is " + py_repr(v) + ", not a list of positive integers");
    return shape;
  }

  int64_t product(const std::vector<int64_t>& values, const std::string& where) const {
    int64_t p = 1;
    for (int64_t v : values) {
      if (v > kTooLarge / p) throw fail(where + " describes more data than a file can hold");
      p *= v;
    }
    return p;
  }

  Layer layer(const Json& e, size_t i, size_t count, const Model& model, const std::vector<int64_t>* previous_out) {
    const std::string where = "layer " + std::to_string(i + 1) + " of " + std::to_string(count);
    if (e.type != Json::Type::object || keys(e) != kLayerFields)
      throw fail(where + " in its header does not have the fields " + join(kLayerFields));
    const Json& kind = *e.find("kind");
    const Json& role = *e.find("role");
    if (!py_equal(kind, string_json("dense")) && !py_equal(kind, string_json("conv")))
      throw fail(where + " is of unknown kind " + py_repr(kind));
    const std::string expected_role = i == count - 1 ? "output" : (i == 0 ? "first" : "hidden");
    if (!py_equal(role, string_json(expected_role)))
      throw fail(where + " has the role " + py_repr(role) + " where its place makes it '" + expected_role + "'");
    Layer layer;
    layer.kind = kind.text;
    layer.role = expected_role;
    layer.in_shape = shape_field(*e.find("in_shape"), "the input shape of " + where);
    layer.out_features = int_field(*e.find("out_features"), "the output count of " + where, 1);
    layer.kernel_size = int_field(*e.find("kernel_size"), "the kernel size of " + where, 0);
    layer.padding = int_field(*e.find("padding"), "the padding of " + where, 0);
    layer.pool = int_field(*e.find("pool"), "the pooling of " + where, 0);
    const auto& in = layer.in_shape;
    if (layer.conv()) {
      if (layer.role == "output") throw fail(where + " is a convolution, but the output layer is dense");
      if (in.size() != 3 || layer.kernel_size % 2 == 0 || layer.padding != layer.kernel_size / 2)
        throw fail(where + " is a convolution with input shape " + shape_text(in) + ", kernel size " +
                   std::to_string(layer.kernel_size) + " and padding " + std::to_string(layer.padding) +
                   ", which do not go together");
      if (layer.pool > 1 && layer.pool > std::min(in[1], in[2]))
        throw fail(where + " pools by " + std::to_string(layer.pool) + " an image of " + std::to_string(in[1]) + "x" +
                   std::to_string(in[2]));
    } else if (layer.kernel_size || layer.padding || layer.pool || (in.size() != 1 && in.size() != 3)) {
      throw fail(where + " is dense but has kernel size " + std::to_string(layer.kernel_size) + ", padding " +
                 std::to_string(layer.padding) + ", pooling " + std::to_string(layer.pool) + " and input shape " +
                 shape_text(in));
    }
    // Python's integers have no bound; here every size the checks below compute must fit in int64.
    const int64_t fan_in = layer.conv() ? product({in[0], layer.kernel_size, layer.kernel_size}, where)
                                        : product(in, where);
    product({layer.out_features, words_for(fan_in), 8}, where);
    product({fan_in, kInputLevels + 1}, where);
    if (!previous_out) {
      const bool fits = layer.conv() ? in == model.input_shape
                                     : in.size() == 1 && in[0] == product(model.input_shape, "its input shape");
      if (!fits)
        throw fail("the first layer takes inputs of shape " + shape_text(in) + ", but the model's input shape is " +
                   shape_text(model.input_shape));
    } else if (in != *previous_out) {
      throw fail(where + " takes inputs of shape " + shape_text(in) + ", but the layer before it gives " +
                 shape_text(*previous_out));
    }
    const Json& tensors = *e.find("tensors");
    const std::set<std::string> names = tensor_names(layer.role, model.input_encoding);
    if (tensors.type != Json::Type::object || keys(tensors) != names)
      throw fail(where + " (" + layer.role + ") carries the tensors " + found_names(tensors) + ", not " + join(names));
    for (const auto& member : tensors.members) tensor(member.second, member.first, layer, where);
    values(layer, where);
    return layer;
  }

  void tensor(const Json& entry, const std::string& name, Layer& layer, const std::string& where) {
    const TensorKind* kind = nullptr;
    for (const auto& k : kTensorKinds)
      if (name == k.name) kind = &k;
    std::vector<int64_t> shape = {layer.out_features};
    if (name == "weight_bits") shape.push_back(words_for(layer.fan_in()));
    const Raw raw = read_entry(entry, "the " + name + " of " + where, kind->dtype, kind->itemsize, shape, "the layer",
                               where);
    auto copy = [&](auto& out) {
      out.resize((size_t)(raw.nbytes / kind->itemsize));
      if (raw.nbytes) std::memcpy(out.data(), raw.data, (size_t)raw.nbytes);
    };
    if (name == "weight_bits") copy(layer.weight_bits);
    else if (name == "direction") copy(layer.direction);
    else if (name == "threshold") copy(layer.threshold);
    else if (name == "float_threshold") copy(layer.float_threshold);
    else if (name == "scale") copy(layer.scale);
    else copy(layer.shift);
  }

  struct Raw {
    const uint8_t* data;
    int64_t nbytes;
  };

  // The bytes a header entry describes, checked against its place in the data section (bnnx.py's entry()).
  Raw read_entry(const Json& entry, const std::string& what, const char* dtype, int64_t itemsize,
                 const std::vector<int64_t>& shape, const std::string& owner, const std::string& where) {
    if (entry.type != Json::Type::object || keys(entry) != kEntryFields)
      throw fail(what + " is not described by " + join(kEntryFields));
    const Json& entry_dtype = *entry.find("dtype");
    if (!py_equal(entry_dtype, string_json(dtype)))
      throw fail(what + " is stored as " + py_repr(entry_dtype) + ", not " + dtype);
    Json shape_json;
    shape_json.type = Json::Type::array;
    for (int64_t d : shape) shape_json.items.push_back(int_json(d));
    const Json& entry_shape = *entry.find("shape");
    if (!py_equal(entry_shape, shape_json))
      throw fail(what + " has the shape " + py_repr(entry_shape) + " where " + owner + " needs " + shape_text(shape));
    std::vector<int64_t> dims = shape;
    dims.push_back(itemsize);
    const int64_t nbytes = product(dims, where);
    const Json& entry_nbytes = *entry.find("nbytes");
    if (!py_equal(entry_nbytes, int_json(nbytes)))
      throw fail(what + " says it takes " + py_repr(entry_nbytes) + " bytes where its shape takes " +
                 std::to_string(nbytes));
    const Json& entry_offset = *entry.find("offset");
    if (!py_equal(entry_offset, int_json(offset_)))
      throw fail(what + " says it starts at byte " + py_repr(entry_offset) + " of the data section, where it lies at "
                 "byte " + std::to_string(offset_));
    const int64_t end = offset_ + nbytes, padded = end + (int64_t)((kAlign - nbytes % kAlign) % kAlign);
    if (padded > body_size_)
      throw fail("its data section ends at byte " + std::to_string(body_size_) + ", before " + what + " (bytes " +
                 std::to_string(offset_) + " to " + std::to_string(end) + ")");
    for (int64_t b = end; b < padded; ++b)
      if (body_[b]) throw fail("the padding after " + what + " is not zero");
    const Raw raw = {body_ + offset_, nbytes};
    offset_ = padded;
    return raw;
  }

  // The fitted input preprocessing (format version 3): bnnx.py's _HeaderReader.preprocessing, check for check.
  void preprocessing(const Json& p, const Json* data, Model& model) {
    if (p.type == Json::Type::null) return;
    if (p.type != Json::Type::object || keys(p) != std::set<std::string>{"kind", "tensors"})
      throw fail("its preprocessing field is neither null nor an object of kind and tensors");
    const Json& kind = *p.find("kind");
    struct Expected {
      const char* name;
      const char* dtype;
      int64_t itemsize;
      const char* rule;  // "pixels" (256), "D" (values per image), "DxD", "1"
    };
    struct Kind {
      const char* name;
      std::vector<Expected> tensors;
    };
    static const Kind kinds[] = {
        {"scale", {{"table", "float32", 4, "pixels"}}},
        {"standardize", {{"table", "float32", 4, "pixels"}}},
        {"zca", {{"mean", "float32", 4, "D"}, {"matrix", "float32", 4, "DxD"}}},
        {"gcn_lcn", {{"mean", "float64", 8, "1"}, {"std", "float64", 8, "1"}}},
    };
    const Kind* known = nullptr;
    for (const auto& k : kinds)
      if (py_equal(kind, string_json(k.name))) known = &k;
    if (!known) throw fail("its preprocessing " + py_repr(kind) + " is not one of scale, standardize, zca, gcn_lcn");
    const std::string name = known->name;
    if ((name == "scale") != model.eight_bit())
      throw fail("its preprocessing '" + name + "' does not go with the input encoding '" + model.input_encoding +
                 "'");
    if (data && data->type == Json::Type::object) {
      const Json* named = data->find("preprocess");
      if (named && !py_equal(*named, string_json(name)))
        throw fail("its preprocessing '" + name + "' is not the " + py_repr(*named) + " its data section names");
    }
    std::set<std::string> expected;
    for (const auto& t : known->tensors) expected.insert(t.name);
    const Json& tensors = *p.find("tensors");
    if (tensors.type != Json::Type::object || keys(tensors) != expected)
      throw fail("its preprocessing (" + name + ") carries the tensors " + found_names(tensors) + ", not " +
                 join(expected));
    const int64_t values = product(model.input_shape, "its input shape");
    double std_value = 1.0;
    for (const auto& member : tensors.members) {
      const Expected* e = nullptr;
      for (const auto& t : known->tensors)
        if (member.first == t.name) e = &t;
      const std::string rule = e->rule, what = "the preprocessing's " + member.first;
      std::vector<int64_t> shape;
      if (rule == "pixels") shape = {256};
      else if (rule == "D") shape = {values};
      else if (rule == "DxD") shape = {values, values};
      else shape = {1};
      const Raw raw = read_entry(member.second, what, e->dtype, e->itemsize, shape, "it", what);
      const int64_t count = raw.nbytes / e->itemsize;
      bool finite = true;
      std::vector<double> as_double;
      for (int64_t i = 0; i < count; ++i) {
        double v;
        if (e->itemsize == 4) {
          float f;
          std::memcpy(&f, raw.data + 4 * i, 4);
          v = f;
        } else {
          std::memcpy(&v, raw.data + 8 * i, 8);
        }
        finite = finite && std::isfinite(v);
        if (rule == "pixels" || rule == "1") as_double.push_back(v);
      }
      if (!finite) throw fail(what + " holds NaN or infinite values");
      if (rule == "pixels") {
        model.pixel_table.resize(256);
        std::memcpy(model.pixel_table.data(), raw.data, 256 * sizeof(float));
      }
      if (member.first == "std") std_value = as_double[0];
    }
    if (!(std_value > 0)) throw fail("the preprocessing's std is not positive");
    model.preprocessing = name;
  }

  // What the values themselves can be: padding bits zero, directions +/-1, thresholds in range.
  void values(const Layer& layer, const std::string& where) const {
    const int64_t fan_in = layer.fan_in(), words = words_for(fan_in), rem = fan_in % 64;
    if (rem)
      for (int64_t o = 0; o < layer.out_features; ++o)
        if (layer.weight_bits[o * words + words - 1] & ~((uint64_t{1} << rem) - 1))
          throw fail("the weight bits of " + where + " have bits set past its " + std::to_string(fan_in) + " inputs");
    for (int8_t d : layer.direction)
      if (d != 1 && d != -1) throw fail("the directions of " + where + " are not all +1 or -1");
    if (!layer.threshold.empty()) {
      const int64_t bound = fan_in * (layer.role == "first" ? kInputLevels : 1) + 1;
      for (int32_t t : layer.threshold)
        if (std::llabs((long long)t) > bound)
          throw fail("the integer thresholds of " + where + " lie outside [-" + std::to_string(bound) + ", " +
                     std::to_string(bound) + "]");
    }
    for (float t : layer.float_threshold)
      if (std::isnan(t)) throw fail("the float thresholds of " + where + " hold NaN");
    for (const char* name : {"scale", "shift"})
      for (double v : std::strcmp(name, "scale") == 0 ? layer.scale : layer.shift)
        if (!std::isfinite(v))
          throw fail("the output " + std::string(name) + " of " + where + " holds NaN or infinite values");
  }

  const std::string& path_;
  const Json& h_;
  const uint8_t* body_;
  int64_t body_size_;
  int version_;
  int64_t offset_ = 0;  // where the next tensor must start: the writer lays them out in header order
};

}  // namespace

int64_t Layer::fan_in() const {
  if (conv()) return in_shape[0] * kernel_size * kernel_size;
  int64_t p = 1;
  for (int64_t d : in_shape) p *= d;
  return p;
}

std::vector<int64_t> Layer::out_shape() const {
  if (!conv()) return {out_features};
  const int64_t p = std::max<int64_t>(pool, 1);
  return {out_features, in_shape[1] / p, in_shape[2] / p};
}

Model read_export(const uint8_t* data, size_t size, const std::string& path) {
  if (size < sizeof kMagic || std::memcmp(data, kMagic, sizeof kMagic) != 0)
    throw ExportError(Refusal::not_export, path + " is not a bnnctl export file (it does not start with the bnnctl "
                                                  "export signature).");
  if (size < kFixed) throw damaged(path, "it is cut short");
  uint32_t version, header_len;
  std::memcpy(&version, data + 8, 4);
  std::memcpy(&header_len, data + 12, 4);
  if (version < 1 || version > (uint32_t)kExportVersion)
    throw ExportError(Refusal::version, path + " is a bnnctl export of format version " + std::to_string(version) +
                                            "; this bnnctl reads versions 1, 2 and 3, so export the run again with "
                                            "it (or restore the file, if it is damaged).");
  size_t start = kFixed;
  if (version >= 2) {
    start += kDigest;
    if (size < start) throw damaged(path, "it is cut short");
    Sha256 sha;
    sha.update(data, kFixed);
    sha.update(data + start, size - start);
    if (std::memcmp(sha.digest().data(), data + kFixed, kDigest) != 0)
      throw damaged(path, "its content does not match its checksum");
  }
  if (start + header_len > size) throw damaged(path, "it is cut short");
  Json header;
  if (!parse_json(reinterpret_cast<const char*>(data + start), header_len, &header))
    throw damaged(path, "its header is not valid JSON");
  const size_t body = start + header_len;
  return HeaderReader(path, header, data + body, size - body, (int)version).read();
}

Model load_export(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_directory(path, error))
    throw ExportError(Refusal::not_export, path + " is a folder, not a bnnctl export file.");
  if (!fs::is_regular_file(path, error)) throw ExportError(Refusal::not_export, path + " does not exist.");
  std::ifstream file(path, std::ios::binary);
  std::vector<uint8_t> bytes;
  if (file) {
    file.seekg(0, std::ios::end);
    const std::streamoff size = file.tellg();
    file.seekg(0, std::ios::beg);
    if (size >= 0) {
      bytes.resize((size_t)size);
      file.read(reinterpret_cast<char*>(bytes.data()), size);
    }
  }
  if (!file) {
    const int err = errno;
    throw ExportError(Refusal::not_export,
                      path + " cannot be read (" + (err ? std::strerror(err) : "read error") + ").");
  }
  return read_export(bytes.data(), bytes.size(), path);
}

}  // namespace bnnx
