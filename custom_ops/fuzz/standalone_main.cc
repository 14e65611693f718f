// A libFuzzer-compatible driver for compilers without libFuzzer (e.g. g++): feeds
// LLVMFuzzerTestOneInput with inputs from a seeded generator (random bytes, and byte
// mutations of earlier inputs) for a time or run budget, or replays the given files.
// Accepts the libFuzzer flags the Makefile uses: -max_total_time=S -runs=N -seed=N.
#include <dirent.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv);

int main(int argc, char** argv) {
  double seconds = 60;
  uint64_t runs = 0, seed = 1;
  std::vector<std::string> files, dirs;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (!std::strncmp(a, "-max_total_time=", 16)) seconds = std::atof(a + 16);
    else if (!std::strncmp(a, "-runs=", 6)) runs = std::strtoull(a + 6, nullptr, 10);
    else if (!std::strncmp(a, "-seed=", 6)) seed = std::strtoull(a + 6, nullptr, 10);
    else if (a[0] == '-') continue;  // other libFuzzer flags do not apply
    else {
      struct stat st;
      (stat(a, &st) == 0 && S_ISDIR(st.st_mode) ? dirs : files).push_back(a);
    }
  }
  LLVMFuzzerInitialize(&argc, &argv);
  auto read_file = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  if (!files.empty()) {
    for (const auto& f : files) {
      const std::vector<uint8_t> bytes = read_file(f);
      LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
    }
    std::fprintf(stderr, "replayed %zu input(s)\n", files.size());
    return 0;
  }
  std::mt19937_64 rng(seed);
  std::vector<std::vector<uint8_t>> pool;
  // Corpus folders (as libFuzzer takes them): every file runs once, then seeds the mutations.
  for (const auto& d : dirs) {
    if (DIR* dir = opendir(d.c_str())) {
      while (const dirent* entry = readdir(dir)) {
        if (entry->d_name[0] == '.') continue;
        pool.push_back(read_file(d + "/" + entry->d_name));
        LLVMFuzzerTestOneInput(pool.back().data(), pool.back().size());
      }
      closedir(dir);
    }
  }
  const auto start = std::chrono::steady_clock::now();
  uint64_t done = 0;
  for (;; ++done) {
    if (runs && done >= runs) break;
    if (!runs && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >= seconds) break;
    std::vector<uint8_t> input;
    if (!pool.empty() && rng() % 2) {  // mutate an earlier input
      input = pool[rng() % pool.size()];
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !input.empty(); ++e) {
        switch (rng() % 3) {
          case 0: input[rng() % input.size()] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
          case 1: input[rng() % input.size()] = static_cast<uint8_t>(rng()); break;
          default: input.resize(rng() % (input.size() + 1)); break;
        }
      }
    } else {
      input.resize(16 + rng() % 112);
      for (auto& b : input) b = static_cast<uint8_t>(rng());
    }
    LLVMFuzzerTestOneInput(input.data(), input.size());
    if (pool.size() < 256) pool.push_back(input); else pool[rng() % pool.size()] = input;
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "Done %llu runs in %.0f second(s) (seed %llu)\n",
               static_cast<unsigned long long>(done), elapsed, static_cast<unsigned long long>(seed));
  return 0;
}
