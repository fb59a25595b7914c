// The JSON of a .bnnx header, parsed and compared as Python's json module and == do, so that the C++ reader
// (bnnx_reader.cpp) accepts and refuses exactly the headers bnnctl/infer/bnnx.py does. Plain C++.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace bnnx {

struct Json {
  enum class Type { null, boolean, integer, real, string, array, object };
  Type type = Type::null;
  bool boolean = false;
  // An integer; `huge` when it lies past int64 (Python's ints have no bound), its sign then in `integer` (+1 or -1).
  int64_t integer = 0;
  bool huge = false;
  double real = 0;
  std::string text;  // UTF-8; a lone surrogate escape is kept as its 3-byte form, as Python keeps it in a str
  std::vector<Json> items;
  // In the order of the text, a repeated key keeping its first place and its last value, as a Python dict does.
  std::vector<std::pair<std::string, Json>> members;

  bool is_int() const { return type == Type::integer && !huge; }  // a Python int (bools are not)
  const Json* find(const std::string& key) const;
};

// Parses a header's bytes as Python's json.loads(bytes) does: UTF-8 (a UTF-8 byte-order mark skipped; headers that
// look like UTF-16 or UTF-32 are refused), NaN, Infinity and -Infinity accepted, control characters in strings
// refused, at most 900 levels of nesting. Returns false when the bytes are not such JSON.
bool parse_json(const char* text, size_t size, Json* out);

// Python's a == b on the parsed values: numbers by value across int, float and bool (True == 1), strings, lists
// item by item, objects by keys and values; null only equals null.
bool py_equal(const Json& a, const Json& b);

// Python's repr() of the parsed value, for messages ('text', [1, 2], {'a': None}, True, 2.5).
std::string py_repr(const Json& v);

}  // namespace bnnx
