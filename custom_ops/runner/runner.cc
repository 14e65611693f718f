// onnxvq_runner: the C++ deployment example. Loads a (compressed) ONNX model with ONNX
// Runtime, registers the onnxvq op library, feeds inputs from .npy files (or generated),
// runs it, writes each output as <output-dir>/<output name>.npy and prints timings.
//
//   onnxvq_runner --model m.vq.onnx --ops-library libonnxvq_ops.so
//                 --input X=x.npy --output-dir out/ [--repeat 10] [--threads 1]
//
// It links libonnxruntime (the C++ API, header-only over the C API). The op library is not
// linked: ONNX Runtime loads it at run time from the path given.
#define ORT_API_MANUAL_INIT  // check the runtime's API version before any call (see main)
#include <onnxruntime_cxx_api.h>

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "npy.h"

namespace {

const char kUsage[] =
    "usage: onnxvq_runner --model MODEL.onnx [options]\n"
    "  --ops-library PATH   custom-op library to register (libonnxvq_ops.so)\n"
    "  --input NAME=FILE    .npy file for input NAME (repeatable); FILE alone for a one-input model\n"
    "  --dim NAME=N         size of a free dimension NAME of generated inputs (default 1)\n"
    "  --seed N             seed of generated inputs (uniform in [-1, 1); default 0)\n"
    "  --output-dir DIR     write each output to DIR/<name>.npy (DIR is created)\n"
    "  --warmup N           untimed runs first (default 1)\n"
    "  --repeat N           timed runs (default 10)\n"
    "  --threads N          intra-op threads (default: onnxruntime's choice)\n"
    "Inputs without --input are generated.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string model;
  std::string ops_library;
  std::map<std::string, std::string> input_files;  // "" key: the only input
  std::map<std::string, int64_t> dims;
  unsigned seed = 0;
  std::string output_dir;
  int warmup = 1;
  int repeat = 10;
  int threads = 0;
};

// --- command line ----------------------------------------------------------------------

std::pair<std::string, std::string> split_assignment(const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos) return {"", text};
  return {text.substr(0, eq), text.substr(eq + 1)};
}

long parse_int(const std::string& flag, const std::string& text, long minimum) {
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < minimum)
    throw UsageError(flag + " needs an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
  return value;
}

Options parse_args(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) throw UsageError("unknown flag or missing value: " + flag);
    const std::string value = argv[++i];
    if (flag == "--model") {
      options.model = value;
    } else if (flag == "--ops-library") {
      options.ops_library = value;
    } else if (flag == "--input") {
      auto [name, file] = split_assignment(value);
      options.input_files[name] = file;
    } else if (flag == "--dim") {
      auto [name, size] = split_assignment(value);
      if (name.empty()) throw UsageError("--dim needs NAME=N, got '" + value + "'");
      options.dims[name] = parse_int(flag, size, 0);
    } else if (flag == "--seed") {
      options.seed = static_cast<unsigned>(parse_int(flag, value, 0));
    } else if (flag == "--output-dir") {
      options.output_dir = value;
    } else if (flag == "--warmup") {
      options.warmup = static_cast<int>(parse_int(flag, value, 0));
    } else if (flag == "--repeat") {
      options.repeat = static_cast<int>(parse_int(flag, value, 1));
    } else if (flag == "--threads") {
      options.threads = static_cast<int>(parse_int(flag, value, 0));
    } else {
      throw UsageError("unknown flag " + flag);
    }
  }
  if (options.model.empty()) throw UsageError("--model is required");
  return options;
}

// --- tensor types ----------------------------------------------------------------------

struct TypeInfo {
  ONNXTensorElementDataType onnx;
  const char* descr;  // .npy dtype
  const char* name;   // for messages
};
constexpr TypeInfo kTypes[] = {
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "<f4", "float32"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, "<f8", "float64"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, "<f2", "float16"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, "<i8", "int64"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "<i4", "int32"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, "<i2", "int16"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, "|i1", "int8"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, "<u8", "uint64"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32, "<u4", "uint32"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, "<u2", "uint16"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "|u1", "uint8"},
    {ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, "|b1", "bool"},
};

const TypeInfo& type_info(ONNXTensorElementDataType type) {
  for (const TypeInfo& info : kTypes)
    if (info.onnx == type) return info;
  throw std::runtime_error("unsupported tensor element type " + std::to_string(type));
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// --- inputs and outputs ----------------------------------------------------------------

// The model's shape with every free dimension (-1) replaced by --dim NAME=N, or 1.
std::vector<int64_t> concrete_shape(const Ort::ConstTensorTypeAndShapeInfo& info,
                                    const std::map<std::string, int64_t>& dims) {
  std::vector<int64_t> shape = info.GetShape();
  std::vector<const char*> names(shape.size(), nullptr);
  info.GetSymbolicDimensions(names.data(), names.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] >= 0) continue;
    const auto found = names[i] ? dims.find(names[i]) : dims.end();
    shape[i] = found != dims.end() ? found->second : 1;
  }
  return shape;
}

npy::Array generate_input(const TypeInfo& type, std::vector<int64_t> shape, std::mt19937& rng) {
  npy::Array array{type.descr, std::move(shape), {}};
  const size_t count = array.element_count();
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  if (type.onnx == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    std::vector<float> values(count);
    for (float& v : values) v = static_cast<float>(uniform(rng));
    array.data.resize(count * sizeof(float));
    std::memcpy(array.data.data(), values.data(), array.data.size());
  } else if (type.onnx == ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE) {
    std::vector<double> values(count);
    for (double& v : values) v = uniform(rng);
    array.data.resize(count * sizeof(double));
    std::memcpy(array.data.data(), values.data(), array.data.size());
  } else {
    throw std::runtime_error(std::string("cannot generate ") + type.name +
                             " inputs: give them with --input NAME=FILE.npy");
  }
  return array;
}

// The .npy named for input `name` (or for the only input), else generated data.
npy::Array load_input(const Options& options, const std::string& name, size_t input_count,
                      const Ort::ConstTensorTypeAndShapeInfo& info, std::mt19937& rng,
                      std::string& source) {
  const TypeInfo& type = type_info(info.GetElementType());
  auto file = options.input_files.find(name);
  if (file == options.input_files.end() && input_count == 1) file = options.input_files.find("");
  if (file == options.input_files.end()) {
    source = "generated";
    return generate_input(type, concrete_shape(info, options.dims), rng);
  }
  source = "from " + file->second;
  npy::Array array = npy::load(file->second);
  if (array.descr != type.descr)
    throw std::runtime_error(file->second + ": dtype " + array.descr + ", but input '" + name +
                             "' is " + type.name + " (" + type.descr + ")");
  return array;
}

Ort::Value as_tensor(npy::Array& array, const Ort::MemoryInfo& memory,
                     ONNXTensorElementDataType type) {
  return Ort::Value::CreateTensor(memory, array.data.data(), array.data.size(),
                                  array.shape.data(), array.shape.size(), type);
}

npy::Array to_array(const Ort::Value& value) {
  if (!value.IsTensor()) throw std::runtime_error("an output is not a tensor");
  const auto info = value.GetTensorTypeAndShapeInfo();
  npy::Array array{type_info(info.GetElementType()).descr, info.GetShape(), {}};
  const auto* bytes = static_cast<const unsigned char*>(value.GetTensorRawData());
  array.data.assign(bytes, bytes + array.element_count() * npy::item_size(array.descr));
  return array;
}

// An output name as a file name: anything but [A-Za-z0-9._-] becomes '_'.
std::string file_name_for(const std::string& name) {
  std::string out = name.empty() ? "output" : name;
  for (char& c : out)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') c = '_';
  return out + ".npy";
}

// --- the op library --------------------------------------------------------------------

// The kernel table the library chose ("scalar", "neon", "avx2", ...), read through the
// C function it exports for diagnostics. dlopen returns the copy ONNX Runtime already loaded.
std::string kernel_name(const std::string& library) {
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) return "unknown";
  using NameFn = const char* (*)();
  auto name = reinterpret_cast<NameFn>(dlsym(handle, "onnxvq_kernel_name"));
  return name ? name() : "unknown";  // the handle stays open: the string lives in the library
}

// --- running ---------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;

double milliseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

void print_timing(std::vector<double> times, int warmup) {
  std::sort(times.begin(), times.end());
  const double median = times.size() % 2 ? times[times.size() / 2]
                                          : (times[times.size() / 2 - 1] + times[times.size() / 2]) / 2;
  std::printf("run: %zu timed after %d warm-up: median %.3f ms, min %.3f ms, max %.3f ms\n",
              times.size(), warmup, median, times.front(), times.back());
}

// The model's inputs: names, the arrays that own the data, and tensors viewing them.
struct Feeds {
  std::vector<std::string> names;
  std::vector<npy::Array> arrays;
  std::vector<Ort::Value> tensors;
};

std::vector<std::string> io_names(const Ort::Session& session, bool inputs) {
  Ort::AllocatorWithDefaultOptions allocator;
  std::vector<std::string> names;
  const size_t count = inputs ? session.GetInputCount() : session.GetOutputCount();
  for (size_t i = 0; i < count; ++i)
    names.push_back(inputs ? session.GetInputNameAllocated(i, allocator).get()
                           : session.GetOutputNameAllocated(i, allocator).get());
  return names;
}

Feeds prepare_inputs(const Ort::Session& session, const Options& options) {
  Feeds feeds;
  feeds.names = io_names(session, true);
  for (const auto& [name, file] : options.input_files)
    if (!name.empty() && std::find(feeds.names.begin(), feeds.names.end(), name) == feeds.names.end())
      throw UsageError("--input " + name + "=" + file + ": the model has no input '" + name + "'");

  const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::mt19937 rng(options.seed);
  feeds.arrays.reserve(feeds.names.size());  // tensors point into the arrays: no reallocation
  for (size_t i = 0; i < feeds.names.size(); ++i) {
    const Ort::TypeInfo type = session.GetInputTypeInfo(i);
    const auto info = type.GetTensorTypeAndShapeInfo();
    std::string source;
    feeds.arrays.push_back(load_input(options, feeds.names[i], feeds.names.size(), info, rng, source));
    feeds.tensors.push_back(as_tensor(feeds.arrays.back(), memory, info.GetElementType()));
    std::printf("input %s: %s %s %s\n", feeds.names[i].c_str(), type_info(info.GetElementType()).name,
                shape_text(feeds.arrays.back().shape).c_str(), source.c_str());
  }
  return feeds;
}

// `warmup` untimed runs, then `repeat` timed ones; returns the outputs of the last.
std::vector<Ort::Value> timed_runs(Ort::Session& session, const Feeds& feeds,
                                   const std::vector<std::string>& output_names,
                                   const Options& options) {
  std::vector<const char*> inputs, outputs;
  for (const auto& name : feeds.names) inputs.push_back(name.c_str());
  for (const auto& name : output_names) outputs.push_back(name.c_str());
  auto run_once = [&] {
    return session.Run(Ort::RunOptions{nullptr}, inputs.data(), feeds.tensors.data(),
                       inputs.size(), outputs.data(), outputs.size());
  };
  for (int i = 0; i < options.warmup; ++i) run_once();
  std::vector<double> times;
  std::vector<Ort::Value> results;
  for (int i = 0; i < options.repeat; ++i) {
    const auto start = Clock::now();
    results = run_once();
    times.push_back(milliseconds_since(start));
  }
  print_timing(times, options.warmup);
  return results;
}

void write_outputs(const std::vector<Ort::Value>& outputs, const std::vector<std::string>& names,
                   const std::string& output_dir) {
  if (!output_dir.empty()) std::filesystem::create_directories(output_dir);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const npy::Array array = to_array(outputs[i]);
    std::string destination;
    if (!output_dir.empty()) {
      destination = output_dir + "/" + file_name_for(names[i]);
      npy::save(destination, array);
    }
    std::printf("output %s: %s %s%s%s\n", names[i].c_str(),
                type_info(outputs[i].GetTensorTypeAndShapeInfo().GetElementType()).name,
                shape_text(array.shape).c_str(), destination.empty() ? "" : " -> ",
                destination.c_str());
  }
}

int run(const Options& options) {
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "onnxvq_runner");
  Ort::SessionOptions session_options;
  if (options.threads > 0) session_options.SetIntraOpNumThreads(options.threads);
  std::printf("onnxruntime: %s\n", Ort::GetVersionString().c_str());
  if (!options.ops_library.empty()) {
    session_options.RegisterCustomOpsLibrary(options.ops_library.c_str());
    std::printf("ops library: %s\nkernel: %s\n", options.ops_library.c_str(),
                kernel_name(options.ops_library).c_str());
  }

  const auto start = Clock::now();
  Ort::Session session(env, options.model.c_str(), session_options);
  std::printf("session: %.1f ms (%s)\n", milliseconds_since(start), options.model.c_str());

  const Feeds feeds = prepare_inputs(session, options);
  const std::vector<std::string> output_names = io_names(session, false);
  const std::vector<Ort::Value> outputs = timed_runs(session, feeds, output_names, options);
  write_outputs(outputs, output_names, options.output_dir);
  return 0;
}

// The C++ API needs the API table of the headers' version. A runtime older than the
// headers returns none; say so instead of crashing on the first call.
bool init_onnxruntime_api() {
  const OrtApiBase* base = OrtGetApiBase();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api) {
    std::fprintf(stderr,
                 "onnxvq_runner: error: onnxruntime %s is too old: this runner was built against "
                 "API version %d (onnxruntime >= 1.%d)\n",
                 base->GetVersionString(), ORT_API_VERSION, ORT_API_VERSION);
    return false;
  }
  Ort::InitApi(api);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines stay in order with errors in logs
  try {
    const Options options = parse_args(argc, argv);
    if (!init_onnxruntime_api()) return 1;
    return run(options);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "onnxvq_runner: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {  // Ort::Exception included
    std::fprintf(stderr, "onnxvq_runner: error: %s\n", e.what());
    return 1;
  }
}
