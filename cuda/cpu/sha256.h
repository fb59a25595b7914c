// SHA-256 (FIPS 180-4), for the checksum of .bnnx files (bnnx_reader.cpp). Plain C++.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

namespace bnnx {

class Sha256 {
 public:
  Sha256();
  void update(const uint8_t* data, size_t size);
  std::array<uint8_t, 32> digest();  // the state is spent afterwards

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t length_ = 0;
};

}  // namespace bnnx
