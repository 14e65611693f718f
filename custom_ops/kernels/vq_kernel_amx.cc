// AMX-INT8 (Sapphire Rapids and later Xeons): the panel GEMM's int8 tier on tiles. The table
// extends the VNNI one and replaces int8_gemm only; only this file is compiled with -mamx-*.
//
// int8_gemm's panel layout is AMX's B layout already: row k/4 of the panel holds every
// column's 4 depths (4N bytes), so 16 panel rows x 64 bytes are one B tile (64 depths x 16
// columns) and 16 rows of X x 64 bytes one A tile. TDPBUSD multiplies unsigned X bytes by
// signed W bytes into 16 x 16 int32 sums, as vpdpbusd does 16 at a time: 16,384 multiply-adds
// per instruction. Blocks of 32 rows x 32 columns (4 C tiles, 2 A, 2 B: the 8 tiles). Tiles
// that would pass the rows, columns or depths are read from zero-padded copies, so nothing
// past the operands is read. The sums are exact, and the epilogue is int8_gemm's float
// formula in its order: every result is the scalar table's bits.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cpuid.h>
#include <cstring>

#include "vq_kernel.h"

namespace onnxvq::kernels {

const KernelTable& avx512vnni_kernel_table();

namespace {

constexpr size_t kTileRows = 16, kTileBytes = 64;  // every tile here: 16 rows x 64 bytes
// Below this many rows the tiles are mostly padding and vpdpbusd's register blocks win.
constexpr size_t kAmxMinRows = 16;
constexpr size_t kL1Bytes = 40 << 10;  // of the 48 KB L1D of Sapphire Rapids and later, for X and the panel

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (rows 0-15 / 16-31 x columns 0-15 / 16-31); 4-5: A; 6-7: B.
void load_tile_config() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) config.rows[t] = kTileRows, config.colsb[t] = kTileBytes;
  _tile_loadconfig(&config);
}

// A tile's source: rows r0 .. r0 + 15 and bytes b0 .. b0 + 63 of a row-major byte matrix
// (rows x bytes, row stride ld), in place when inside it, else a zero-padded copy in `pad`.
struct TileSource {
  const void* data;
  size_t stride;
};
TileSource tile_source(const void* base, size_t ld, size_t rows, size_t bytes, size_t r0, size_t b0, uint8_t* pad) {
  const uint8_t* start = static_cast<const uint8_t*>(base) + r0 * ld + b0;
  if (r0 + kTileRows <= rows && b0 + kTileBytes <= bytes) return {start, ld};
  std::memset(pad, 0, kTileRows * kTileBytes);
  const size_t live_rows = r0 < rows ? std::min(kTileRows, rows - r0) : 0;
  const size_t live_bytes = b0 < bytes ? std::min(kTileBytes, bytes - b0) : 0;
  for (size_t r = 0; r < live_rows; ++r) std::memcpy(pad + r * kTileBytes, start + r * ld, live_bytes);
  return {pad, kTileBytes};
}

inline __mmask16 lanes(size_t count) { return count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1); }

// int8_block's epilogue on a 32 x 32 block of sums (row stride 32).
void epilogue(const int32_t* sums, size_t rows, size_t cols, const float* xs, const float* ws,
              const int32_t* bias128, float* y, size_t ldy, bool accumulate) {
  for (size_t v = 0; v < cols; v += 16) {
    const __mmask16 mask = lanes(cols - v);
    const __m512i b = _mm512_maskz_loadu_epi32(mask, bias128 + v);
    const __m512 s = _mm512_maskz_loadu_ps(mask, ws + v);
    for (size_t i = 0; i < rows; ++i) {
      const __m512i acc = _mm512_loadu_si512(sums + i * 32 + v);
      const __m512 value = _mm512_mul_ps(_mm512_set1_ps(xs[i]), _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, b))));
      float* out = y + i * ldy + v;
      _mm512_mask_storeu_ps(out, mask, accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), value) : value);
    }
  }
}

// One block: rows m0 .. m0 + 31 (m0 .. m0 + 15 with one row of tiles) x columns n0 .. n0 + 31.
template <bool kTwoRowTiles>
void amx_block(const uint8_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N, size_t m0, size_t n0,
               uint8_t (*pad)[kTileRows * kTileBytes], int32_t* sums) {
  const size_t panel_rows = K4 / 4, panel_bytes = 4 * N;  // the panel as a byte matrix
  _tile_zero(0);
  _tile_zero(1);
  if (kTwoRowTiles) {
    _tile_zero(2);
    _tile_zero(3);
  }
  // A block wholly inside the operands (the usual case) loads every tile in place, without
  // the edge checks.
  const bool inside = m0 + (kTwoRowTiles ? 32 : 16) <= M && n0 + 32 <= N && K4 % kTileBytes == 0;
  auto source = [&](size_t tile, size_t k0) -> TileSource {  // tile: A0, A1, B0, B1
    const size_t row0 = m0 + 16 * (tile & 1), col0 = n0 + 16 * (tile & 1);
    if (tile < 2)
      return inside ? TileSource{xq + row0 * ldq + k0, ldq} : tile_source(xq, ldq, M, K4, row0, k0, pad[tile]);
    return inside ? TileSource{wq + (k0 / 4) * panel_bytes + 4 * col0, panel_bytes}
                  : tile_source(wq, panel_bytes, panel_rows, panel_bytes, k0 / 4, 4 * col0, pad[tile]);
  };
  for (size_t k0 = 0; k0 < K4; k0 += kTileBytes) {
    const TileSource a0 = source(0, k0), b0 = source(2, k0), b1 = source(3, k0);
    _tile_loadd(4, a0.data, a0.stride);
    _tile_loadd(6, b0.data, b0.stride);
    _tile_loadd(7, b1.data, b1.stride);
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    if (kTwoRowTiles) {
      const TileSource a1 = source(1, k0);
      _tile_loadd(5, a1.data, a1.stride);
      _tile_dpbusd(2, 5, 6);
      _tile_dpbusd(3, 5, 7);
    }
  }
  _tile_stored(0, sums, 32 * sizeof(int32_t));
  _tile_stored(1, sums + 16, 32 * sizeof(int32_t));
  if (kTwoRowTiles) {
    _tile_stored(2, sums + 16 * 32, 32 * sizeof(int32_t));
    _tile_stored(3, sums + 16 * 32 + 16, 32 * sizeof(int32_t));
  }
}

void int8_gemm_amx(const uint8_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N, const float* xs,
                   const float* ws, const int32_t* bias128, float* y, size_t ldy, bool accumulate) {
  if (M < kAmxMinRows || K4 == 0) {
    avx512vnni_kernel_table().int8_gemm(xq, ldq, M, K4, wq, N, xs, ws, bias128, y, ldy, accumulate);
    return;
  }
  load_tile_config();
  alignas(64) uint8_t pad[4][kTileRows * kTileBytes];  // A0, A1, B0, B1 when a tile passes an edge
  alignas(64) int32_t sums[32 * 32];
  auto block = [&](size_t m0, size_t n0) {
    const size_t rows = std::min<size_t>(32, M - m0);
    if (rows > 16)
      amx_block<true>(xq, ldq, M, K4, wq, N, m0, n0, pad, sums);
    else
      amx_block<false>(xq, ldq, M, K4, wq, N, m0, n0, pad, sums);
    epilogue(sums, rows, std::min<size_t>(32, N - n0), xs + m0, ws + n0, bias128 + n0, y + m0 * ldy + n0, ldy,
             accumulate);
  };
  // Whichever operand fits L1 stays there: all of X's rows with one 32-column strip of the
  // panel when X is small, else one 32-row block of X across the panel.
  if (M * K4 + 32 * K4 <= kL1Bytes) {
    for (size_t n0 = 0; n0 < N; n0 += 32)
      for (size_t m0 = 0; m0 < M; m0 += 32) block(m0, n0);
  } else {
    for (size_t m0 = 0; m0 < M; m0 += 32)
      for (size_t n0 = 0; n0 < N; n0 += 32) block(m0, n0);
  }
  _tile_release();  // back to the init state: a context switch does not save 8 KB of tiles
}

}  // namespace

// CPUID.(7,0):EDX bits 24 (AMX-TILE) and 25 (AMX-INT8), XCR0 bits 17-18 (the OS saves tile
// state), and Linux's per-process permission for the tile data (arch_prctl, asked once).
bool amx_int8_usable() {
  static const bool usable = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1)) return false;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return false;  // OSXSAVE: xgetbv works
    unsigned lo = 0, hi = 0;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3) != 3) return false;
#if defined(__linux__)
    constexpr long kArchRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kArchRequestPermission, kTileData) == 0;
#else
    return false;
#endif
  }();
  return usable;
}

const KernelTable& amx_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t = avx512vnni_kernel_table();
    t.name = "avx512vbmi-vnni-amx";  // keeps the "avx512vbmi-vnni" threshold rows
    t.int8_gemm = int8_gemm_amx;
    return t;
  }();
  return table;
}

}  // namespace onnxvq::kernels
