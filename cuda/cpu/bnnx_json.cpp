// A JSON parser with Python's json.loads rules (see bnnx_json.h), Python's == on the result, and Python's repr.
#include "bnnx_json.h"

#include <cerrno>
#include <clocale>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace bnnx {
namespace {

constexpr int kMaxDepth = 900;      // Python's recursion limit (1000) less the frames around json.loads
constexpr size_t kMaxDigits = 4300;  // Python's int() refuses longer decimal strings (sys.int_info)

// Whether bytes are UTF-8 as Python decodes it with errors="surrogatepass": standard UTF-8, plus the 3-byte forms
// of the surrogates U+D800..U+DFFF.
bool valid_utf8(const unsigned char* s, size_t n) {
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (int j = 1; j < len; ++j) {
      if ((s[i + j] & 0xc0) != 0x80) return false;
      cp = cp << 6 | (s[i + j] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))) return false;  // overlong, too big
    i += len;
  }
  return true;
}

// strtod and printf read and write the locale's decimal point; JSON's is '.'.
char locale_point() {
  const char* point = std::localeconv()->decimal_point;
  return point && point[0] ? point[0] : '.';
}

double parse_real(std::string text) {
  for (char& c : text)
    if (c == '.') c = locale_point();
  return std::strtod(text.c_str(), nullptr);  // overflow gives +-inf and underflow 0, as Python's float() does
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xc0 | cp >> 6);
    out += (char)(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += (char)(0xe0 | cp >> 12);
    out += (char)(0x80 | ((cp >> 6) & 0x3f));
    out += (char)(0x80 | (cp & 0x3f));
  } else {
    out += (char)(0xf0 | cp >> 18);
    out += (char)(0x80 | ((cp >> 12) & 0x3f));
    out += (char)(0x80 | ((cp >> 6) & 0x3f));
    out += (char)(0x80 | (cp & 0x3f));
  }
}

class Parser {
 public:
  Parser(const char* s, size_t n) : s_(s), n_(n) {}

  bool document(Json* out) {
    skip_space();
    if (!value(out, 0)) return false;
    skip_space();
    return i_ == n_;
  }

 private:
  void skip_space() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  bool literal(const char* word) {
    const size_t len = std::strlen(word);
    if (n_ - i_ < len || std::memcmp(s_ + i_, word, len) != 0) return false;
    i_ += len;
    return true;
  }

  bool value(Json* out, int depth) {
    if (i_ >= n_ || depth > kMaxDepth) return false;
    const char c = s_[i_];
    if (c == '{') return object(out, depth + 1);
    if (c == '[') return array(out, depth + 1);
    if (c == '"') {
      out->type = Json::Type::string;
      return string(&out->text);
    }
    if (literal("null")) return out->type = Json::Type::null, true;
    if (literal("true")) return out->type = Json::Type::boolean, out->boolean = true, true;
    if (literal("false")) return out->type = Json::Type::boolean, out->boolean = false, true;
    if (literal("NaN")) return out->type = Json::Type::real, out->real = std::nan(""), true;
    if (literal("Infinity")) return out->type = Json::Type::real, out->real = INFINITY, true;
    if (literal("-Infinity")) return out->type = Json::Type::real, out->real = -INFINITY, true;
    return number(out);
  }

  bool digits(size_t* count) {
    const size_t start = i_;
    while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    *count = i_ - start;
    return *count > 0;
  }

  // -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?: an int without fraction and exponent, else a float.
  bool number(Json* out) {
    const size_t start = i_;
    if (i_ < n_ && s_[i_] == '-') ++i_;
    size_t count;
    if (i_ < n_ && s_[i_] == '0') {
      ++i_;
    } else if (!digits(&count)) {
      return false;
    }
    const size_t int_end = i_;
    bool real = false;
    if (i_ + 1 < n_ && s_[i_] == '.' && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9') {
      ++i_;
      digits(&count);
      real = true;
    }
    if (i_ < n_ && (s_[i_] == 'e' || s_[i_] == 'E')) {
      const size_t mark = i_++;
      if (i_ < n_ && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (digits(&count)) {
        real = true;
      } else {
        i_ = mark;  // not an exponent: the number ends before the 'e' (and what follows is refused)
      }
    }
    const std::string text(s_ + start, i_ - start);
    if (real) {
      out->type = Json::Type::real;
      out->real = parse_real(text);
      return true;
    }
    const bool negative = s_[start] == '-';
    const size_t digit_count = int_end - start - (negative ? 1 : 0);
    if (digit_count > kMaxDigits) return false;
    out->type = Json::Type::integer;
    errno = 0;
    const long long v = std::strtoll(text.c_str(), nullptr, 10);
    if (errno == ERANGE) {
      out->huge = true;
      out->integer = negative ? -1 : 1;
      out->text = text;
    } else {
      out->integer = v;
    }
    return true;
  }

  bool hex4(uint32_t* cp) {
    if (n_ - i_ < 4) return false;
    uint32_t v = 0;
    for (int j = 0; j < 4; ++j) {
      const char c = s_[i_ + j];
      int d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else return false;
      v = v << 4 | (uint32_t)d;
    }
    i_ += 4;
    *cp = v;
    return true;
  }

  bool string(std::string* out) {
    ++i_;  // the opening quote
    while (i_ < n_) {
      const unsigned char c = (unsigned char)s_[i_++];
      if (c == '"') return true;
      if (c < 0x20) return false;  // strict: no raw control characters
      if (c != '\\') {
        *out += (char)c;
        continue;
      }
      if (i_ >= n_) return false;
      const char e = s_[i_++];
      switch (e) {
        case '"': *out += '"'; break;
        case '\\': *out += '\\'; break;
        case '/': *out += '/'; break;
        case 'b': *out += '\b'; break;
        case 'f': *out += '\f'; break;
        case 'n': *out += '\n'; break;
        case 'r': *out += '\r'; break;
        case 't': *out += '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!hex4(&cp)) return false;
          if (cp >= 0xd800 && cp <= 0xdbff && n_ - i_ >= 6 && s_[i_] == '\\' && s_[i_ + 1] == 'u') {
            const size_t mark = i_;
            i_ += 2;
            uint32_t low;
            if (hex4(&low) && low >= 0xdc00 && low <= 0xdfff) {
              cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            } else {
              i_ = mark;  // a lone high surrogate; what follows is read on its own
            }
          }
          append_utf8(*out, cp);
          break;
        }
        default: return false;
      }
    }
    return false;
  }

  bool array(Json* out, int depth) {
    out->type = Json::Type::array;
    ++i_;
    skip_space();
    if (i_ < n_ && s_[i_] == ']') return ++i_, true;
    for (;;) {
      out->items.emplace_back();
      if (!value(&out->items.back(), depth)) return false;
      skip_space();
      if (i_ >= n_) return false;
      if (s_[i_] == ']') return ++i_, true;
      if (s_[i_++] != ',') return false;
      skip_space();
    }
  }

  bool object(Json* out, int depth) {
    out->type = Json::Type::object;
    ++i_;
    skip_space();
    if (i_ < n_ && s_[i_] == '}') return ++i_, true;
    for (;;) {
      if (i_ >= n_ || s_[i_] != '"') return false;
      std::string key;
      if (!string(&key)) return false;
      skip_space();
      if (i_ >= n_ || s_[i_++] != ':') return false;
      skip_space();
      Json v;
      if (!value(&v, depth)) return false;
      bool replaced = false;
      for (auto& member : out->members)
        if (member.first == key) {
          member.second = std::move(v);
          replaced = true;
          break;
        }
      if (!replaced) out->members.emplace_back(std::move(key), std::move(v));
      skip_space();
      if (i_ >= n_) return false;
      if (s_[i_] == '}') return ++i_, true;
      if (s_[i_++] != ',') return false;
      skip_space();
    }
  }

  const char* s_;
  size_t n_, i_ = 0;
};

bool numeric(const Json& v) {
  return v.type == Json::Type::integer || v.type == Json::Type::real || v.type == Json::Type::boolean;
}

bool number_equal(const Json& a, const Json& b) {
  if (a.huge || b.huge) return a.huge && b.huge && a.text == b.text;
  const bool a_real = a.type == Json::Type::real, b_real = b.type == Json::Type::real;
  const int64_t ai = a.type == Json::Type::boolean ? a.boolean : a.integer;
  const int64_t bi = b.type == Json::Type::boolean ? b.boolean : b.integer;
  if (a_real && b_real) return a.real == b.real;
  if (!a_real && !b_real) return ai == bi;
  const double d = a_real ? a.real : b.real;
  const int64_t i = a_real ? bi : ai;
  // Exactly, as Python compares an int with a float: d must be a whole number within int64's range.
  if (!std::isfinite(d) || d != std::floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0) return false;
  return (int64_t)d == i;
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {  // the shortest form that reads back as d
    std::snprintf(buf, sizeof buf, "%.*e", precision - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  // buf: [-]d[.ddd]e[+-]xx, its point the locale's
  std::string text(buf);
  for (char& c : text)
    if (c == locale_point()) c = '.';
  const size_t e = text.find('e');
  const int exponent = std::atoi(text.c_str() + e + 1);
  std::string mantissa = text.substr(0, e), sign;
  if (mantissa[0] == '-') {
    sign = "-";
    mantissa.erase(0, 1);
  }
  std::string digits_only;
  for (char c : mantissa)
    if (c != '.') digits_only += c;
  if (exponent < -4 || exponent >= 16) {
    std::string out = sign + digits_only.substr(0, 1);
    if (digits_only.size() > 1) out += "." + digits_only.substr(1);
    std::snprintf(buf, sizeof buf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + buf;
  }
  if (exponent < 0) return sign + "0." + std::string(-exponent - 1, '0') + digits_only;
  if ((int)digits_only.size() <= exponent + 1)
    return sign + digits_only + std::string(exponent + 1 - digits_only.size(), '0') + ".0";
  return sign + digits_only.substr(0, exponent + 1) + "." + digits_only.substr(exponent + 1);
}

std::string string_repr(const std::string& s) {
  const bool single = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char quote = single ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += (char)c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += (char)c;
    }
  }
  return out + quote;
}

}  // namespace

const Json* Json::find(const std::string& key) const {
  for (const auto& member : members)
    if (member.first == key) return &member.second;
  return nullptr;
}

bool parse_json(const char* text, size_t size, Json* out) {
  const unsigned char* s = reinterpret_cast<const unsigned char*>(text);
  if (size >= 3 && s[0] == 0xef && s[1] == 0xbb && s[2] == 0xbf) {
    text += 3;
    size -= 3;
    s += 3;
  } else if ((size >= 2 && (s[0] == 0 || s[1] == 0)) || (size >= 2 && ((s[0] == 0xff && s[1] == 0xfe) ||
                                                                       (s[0] == 0xfe && s[1] == 0xff)))) {
    return false;  // UTF-16 or UTF-32: never written by bnnctl
  }
  if (!valid_utf8(s, size)) return false;
  *out = Json();
  return Parser(text, size).document(out);
}

bool py_equal(const Json& a, const Json& b) {
  if (numeric(a) || numeric(b)) return numeric(a) && numeric(b) && number_equal(a, b);
  if (a.type != b.type) return false;
  switch (a.type) {
    case Json::Type::null: return true;
    case Json::Type::string: return a.text == b.text;
    case Json::Type::array:
      if (a.items.size() != b.items.size()) return false;
      for (size_t i = 0; i < a.items.size(); ++i)
        if (!py_equal(a.items[i], b.items[i])) return false;
      return true;
    case Json::Type::object:
      if (a.members.size() != b.members.size()) return false;
      for (const auto& member : a.members) {
        const Json* other = b.find(member.first);
        if (!other || !py_equal(member.second, *other)) return false;
      }
      return true;
    default: return false;
  }
}

std::string py_repr(const Json& v) {
  switch (v.type) {
    case Json::Type::null: return "None";
    case Json::Type::boolean: return v.boolean ? "True" : "False";
    case Json::Type::integer: return v.huge ? v.text : std::to_string(v.integer);
    case Json::Type::real: return float_repr(v.real);
    case Json::Type::string: return string_repr(v.text);
    case Json::Type::array: {
      std::string out = "[";
      for (size_t i = 0; i < v.items.size(); ++i) out += (i ? ", " : "") + py_repr(v.items[i]);
      return out + "]";
    }
    case Json::Type::object: {
      std::string out = "{";
      for (size_t i = 0; i < v.members.size(); ++i)
        out += (i ? ", " : "") + string_repr(v.members[i].first) + ": " + py_repr(v.members[i].second);
      return out + "}";
    }
  }
  return "";
}

}  // namespace bnnx
