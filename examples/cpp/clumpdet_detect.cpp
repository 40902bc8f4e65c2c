// clumpdet_detect: run an exported clumpdet ONNX model from C++ (no Python).
//
// Usage:
//   clumpdet_detect [--threads N] MODEL.onnx CUTOUT [CUTOUT ...]
//
// Each CUTOUT is one model input image, float32 RGB in [0, 1], [3, H, W]
// (plane order R, G, B; row-major, row 0 first; H, W the model's input size):
//   *.f32 / *.raw  raw little-endian float32, exactly 3*H*W*4 bytes, no header;
//   *.fits / *.fit a FITS file (BITPIX = -32 only) holding the three planes as
//                  a primary [NAXIS3=3, NAXIS2=H, NAXIS1=W] cube or as three 2-D
//                  image HDUs (extensions, in order R, G, B).
// write_cutout.py turns any input the Python engine reads (FITS flux cubes,
// PNG, .npy) into such a file with the engine's own preprocessing.
//
// All cutouts go through the model as one batch [N, 3, H, W]. Output on stdout:
//   # <cutout>: <n> detections
//   <label_id> <class_name> <score> <x1> <y1> <x2> <y2>      (one line per detection)
// Boxes are in model-input pixels, pixel i spanning [i, i+1) (DESIGN section 3);
// detections are sorted by descending score and already post-processed by the
// graph (thresholds, NMS, top-K). Model facts (input size, class names) come
// from the model itself: the input shape and the clumpdet.* metadata.
//
// Exit status: 0 on success, 1 on any error (message on stderr).

#include <onnxruntime_cxx_api.h>

#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

// ---------------------------------------------------------------- tiny JSON
// Just enough JSON to read two metadata values: a string array
// (clumpdet.class_names) and integer members of an object (clumpdet.input).
struct Json {
  const std::string& s;
  size_t i = 0;
  explicit Json(const std::string& text) : s(text) {}

  void ws() { while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i; }
  bool eat(char c) { ws(); if (i < s.size() && s[i] == c) { ++i; return true; } return false; }
  void expect(char c) {
    if (!eat(c)) fail(std::string("metadata JSON: expected '") + c + "' at offset " + std::to_string(i));
  }

  std::string str() {
    expect('"');
    std::string out;
    while (i < s.size() && s[i] != '"') {
      char c = s[i++];
      if (c != '\\') { out += c; continue; }
      if (i >= s.size()) break;
      char e = s[i++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {  // BMP code point -> UTF-8 (surrogate pairs are not needed for class names)
          if (i + 4 > s.size()) fail("metadata JSON: bad \\u escape");
          unsigned cp = static_cast<unsigned>(std::stoul(s.substr(i, 4), nullptr, 16));
          i += 4;
          if (cp < 0x80) { out += static_cast<char>(cp); }
          else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6));
                                 out += static_cast<char>(0x80 | (cp & 0x3F)); }
          else { out += static_cast<char>(0xE0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
                 out += static_cast<char>(0x80 | (cp & 0x3F)); }
          break;
        }
        default: out += e;  // \" \\ \/
      }
    }
    expect('"');
    return out;
  }

  // Skip any value (used for object members we do not need).
  void skip() {
    ws();
    if (i >= s.size()) fail("metadata JSON: unexpected end");
    char c = s[i];
    if (c == '"') { str(); return; }
    if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      ++i;
      if (eat(close)) return;
      do { if (close == '}') { str(); expect(':'); } skip(); } while (eat(','));
      expect(close);
      return;
    }
    while (i < s.size() && std::strchr(",}] \t\r\n", s[i]) == nullptr) ++i;  // number, true, false, null
  }

  std::vector<std::string> string_array() {
    std::vector<std::string> out;
    expect('[');
    if (eat(']')) return out;
    do { out.push_back(str()); } while (eat(','));
    expect(']');
    return out;
  }

  // Integer member `key` of a top-level object, or -1 if absent.
  long long int_member(const std::string& key) {
    long long found = -1;
    expect('{');
    if (eat('}')) return found;
    do {
      std::string k = str();
      expect(':');
      ws();
      if (k == key) {
        size_t used = 0;
        found = std::stoll(s.substr(i), &used);
        i += used;
      } else {
        skip();
      }
    } while (eat(','));
    expect('}');
    return found;
  }
};

// ---------------------------------------------------------------- inputs
std::vector<char> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  return std::vector<char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

bool host_little_endian() {
  const uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// Copy n float32 values stored with the given byte order into out.
void decode_floats(const char* src, size_t n, bool little, float* out) {
  const bool swap = little != host_little_endian();
  for (size_t k = 0; k < n; ++k) {
    std::array<char, 4> b;
    std::memcpy(b.data(), src + 4 * k, 4);
    if (swap) { std::swap(b[0], b[3]); std::swap(b[1], b[2]); }
    std::memcpy(out + k, b.data(), 4);
  }
}

void read_raw(const std::string& path, int64_t h, int64_t w, float* out) {
  std::vector<char> bytes = read_all(path);
  const size_t want = static_cast<size_t>(3 * h * w) * 4;
  if (bytes.size() != want)
    fail(path + ": " + std::to_string(bytes.size()) + " bytes, expected " + std::to_string(want) +
         " (float32 [3, " + std::to_string(h) + ", " + std::to_string(w) + "])");
  decode_floats(bytes.data(), 3 * h * w, /*little=*/true, out);
}

// One FITS header: keyword -> raw value text (before any comment).
struct FitsHeader {
  std::vector<std::pair<std::string, std::string>> cards;
  long long get(const std::string& key, long long dflt, const std::string& path) const {
    for (const auto& kv : cards)
      if (kv.first == key) {
        try {
          return std::stoll(kv.second);
        } catch (const std::exception&) {
          fail(path + ": FITS keyword " + key + " is not an integer");
        }
      }
    return dflt;
  }
  bool has(const std::string& key) const {
    for (const auto& kv : cards) if (kv.first == key) return true;
    return false;
  }
};

// Minimal FITS reader: BITPIX -32 images, no BSCALE/BZERO, no compression.
void read_fits(const std::string& path, int64_t h, int64_t w, float* out) {
  std::vector<char> bytes = read_all(path);
  const size_t block = 2880;
  size_t pos = 0;
  int planes = 0;
  for (int hdu = 0; pos < bytes.size() && planes < 3; ++hdu) {
    FitsHeader hdr;
    bool end = false;
    while (!end) {
      if (pos + block > bytes.size()) fail(path + ": truncated FITS header in HDU " + std::to_string(hdu));
      for (size_t c = 0; c < block; c += 80) {
        std::string card(bytes.data() + pos + c, 80);
        std::string key = card.substr(0, 8);
        key.erase(key.find_last_not_of(' ') + 1);
        if (key == "END") { end = true; break; }
        if (card.compare(8, 2, "= ") != 0) continue;  // COMMENT, HISTORY, blank
        std::string value = card.substr(10);
        size_t slash = value.find('/');  // integers and logicals only: a '/' starts the comment
        if (slash != std::string::npos && value.find('\'') == std::string::npos) value.resize(slash);
        hdr.cards.emplace_back(key, value);
      }
      pos += block;
    }
    const long long bitpix = hdr.get("BITPIX", 0, path), naxis = hdr.get("NAXIS", 0, path);
    std::vector<long long> dims;
    long long count = naxis > 0 ? 1 : 0;
    for (long long a = 1; a <= naxis; ++a) {
      dims.push_back(hdr.get("NAXIS" + std::to_string(a), 0, path));
      count *= dims.back();
    }
    count = (count + hdr.get("PCOUNT", 0, path)) * hdr.get("GCOUNT", 1, path);
    const size_t data_bytes = static_cast<size_t>(count) * static_cast<size_t>(std::llabs(bitpix) / 8);
    if (pos + data_bytes > bytes.size()) fail(path + ": truncated FITS data in HDU " + std::to_string(hdu));
    if (naxis > 0 && count > 0) {
      const std::string where = path + " HDU " + std::to_string(hdu);
      if (bitpix != -32) fail(where + ": BITPIX " + std::to_string(bitpix) + "; only -32 (float32) is supported");
      if (hdr.has("BSCALE") || hdr.has("BZERO")) fail(where + ": BSCALE/BZERO are not supported");
      if (dims[0] != w || dims[1] != h)
        fail(where + ": image is " + std::to_string(dims[0]) + "x" + std::to_string(dims[1]) +
             " (NAXIS1 x NAXIS2), the model takes " + std::to_string(w) + "x" + std::to_string(h));
      const long long n_here = naxis == 2 ? 1 : (naxis == 3 ? dims[2] : -1);
      if (n_here < 1 || planes + n_here > 3)
        fail(where + ": expected 2-D planes or one [3, H, W] cube, found NAXIS=" + std::to_string(naxis));
      decode_floats(bytes.data() + pos, static_cast<size_t>(n_here * h * w), /*little=*/false, out + planes * h * w);
      planes += static_cast<int>(n_here);
    }
    pos += (data_bytes + block - 1) / block * block;
  }
  if (planes != 3) fail(path + ": found " + std::to_string(planes) + " image planes, expected 3 (R, G, B)");
}

bool ends_with(const std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size()) return false;
  std::string tail = s.substr(s.size() - suffix.size());
  for (auto& c : tail) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return tail == suffix;
}

void read_cutout(const std::string& path, int64_t h, int64_t w, float* out) {
  if (ends_with(path, ".fits") || ends_with(path, ".fit")) read_fits(path, h, w, out);
  else read_raw(path, h, w, out);
  for (int64_t k = 0; k < 3 * h * w; ++k)
    if (!std::isfinite(out[k])) fail(path + ": non-finite pixel value at flat index " + std::to_string(k));
}

std::string metadata(const Ort::ModelMetadata& meta, const char* key, Ort::AllocatorWithDefaultOptions& alloc,
                     const std::string& model) {
  Ort::AllocatedStringPtr value = meta.LookupCustomMetadataMapAllocated(key, alloc);
  if (!value) fail(model + ": metadata key " + key + " missing (not a clumpdet export?)");
  return std::string(value.get());
}

int run(int argc, char** argv) {
  int threads = 0;  // 0: onnxruntime's default
  std::vector<std::string> args;
  for (int a = 1; a < argc; ++a) {
    std::string s = argv[a];
    if (s == "--threads" && a + 1 < argc) threads = std::stoi(argv[++a]);
    else args.push_back(s);
  }
  if (args.size() < 2) {
    std::fprintf(stderr, "usage: clumpdet_detect [--threads N] MODEL.onnx CUTOUT [CUTOUT ...]\n");
    return 1;
  }
  const std::string model_path = args[0];
  const std::vector<std::string> cutouts(args.begin() + 1, args.end());

  // 1. Open the model once; a session is thread-safe for concurrent Run() calls.
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "clumpdet");
  Ort::SessionOptions opts;
  opts.SetIntraOpNumThreads(threads);
  opts.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  opts.AddConfigEntry("session.intra_op.allow_spinning", "0");
  Ort::Session session(env, model_path.c_str(), opts);

  // 2. The contract travels with the model: input shape and clumpdet.* metadata.
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<int64_t> shape = session.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
  if (shape.size() != 4 || shape[1] != 3) fail(model_path + ": input is not [N, 3, H, W]");
  Ort::ModelMetadata meta = session.GetModelMetadata();
  std::string input_json = metadata(meta, "clumpdet.input", alloc, model_path);
  const long long meta_h = Json(input_json).int_member("height"), meta_w = Json(input_json).int_member("width");
  const int64_t h = shape[2] > 0 ? shape[2] : meta_h, w = shape[3] > 0 ? shape[3] : meta_w;
  if (h != meta_h || w != meta_w)
    fail(model_path + ": input shape H, W = " + std::to_string(h) + ", " + std::to_string(w) +
         " disagrees with clumpdet.input " + std::to_string(meta_h) + ", " + std::to_string(meta_w));
  std::string names_json = metadata(meta, "clumpdet.class_names", alloc, model_path);
  const std::vector<std::string> class_names = Json(names_json).string_array();
  std::fprintf(stderr, "clumpdet_detect: model %s, input [N, 3, %lld, %lld], %zu classes, onnxruntime %s\n",
               model_path.c_str(), static_cast<long long>(h), static_cast<long long>(w), class_names.size(),
               Ort::GetVersionString().c_str());

  // 3. One batch [N, 3, H, W] of float32 RGB in [0, 1].
  const int64_t n = static_cast<int64_t>(cutouts.size()), plane = 3 * h * w;
  std::vector<float> batch(static_cast<size_t>(n * plane));
  for (int64_t k = 0; k < n; ++k) read_cutout(cutouts[k], h, w, batch.data() + k * plane);
  const std::array<int64_t, 4> dims{n, 3, h, w};
  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Ort::Value input = Ort::Value::CreateTensor<float>(cpu, batch.data(), batch.size(), dims.data(), dims.size());

  // 4. Run. Outputs (fixed shapes, zero-padded past num_dets, sorted by score):
  //    num_dets int64 [N], boxes float32 [N, K, 4], scores float32 [N, K], labels int64 [N, K].
  const char* in_names[] = {"images"};
  const char* out_names[] = {"num_dets", "boxes", "scores", "labels"};
  std::vector<Ort::Value> out = session.Run(Ort::RunOptions{nullptr}, in_names, &input, 1, out_names, 4);
  const int64_t k_max = out[2].GetTensorTypeAndShapeInfo().GetShape()[1];
  const int64_t* num = out[0].GetTensorData<int64_t>();
  const float* boxes = out[1].GetTensorData<float>();
  const float* scores = out[2].GetTensorData<float>();
  const int64_t* labels = out[3].GetTensorData<int64_t>();

  for (int64_t b = 0; b < n; ++b) {
    if (num[b] < 0 || num[b] > k_max) fail(model_path + ": num_dets out of range (not a clumpdet export?)");
    std::printf("# %s: %lld detections\n", cutouts[b].c_str(), static_cast<long long>(num[b]));
    for (int64_t d = 0; d < num[b]; ++d) {
      const int64_t idx = b * k_max + d;
      const int64_t label = labels[idx];
      const std::string name = label >= 0 && label < static_cast<int64_t>(class_names.size())
                                   ? class_names[static_cast<size_t>(label)]
                                   : "class_" + std::to_string(label);
      const float* box = boxes + 4 * idx;
      std::printf("%lld %s %.9g %.9g %.9g %.9g %.9g\n", static_cast<long long>(label), name.c_str(), scores[idx],
                  box[0], box[1], box[2], box[3]);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "clumpdet_detect: onnxruntime error: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "clumpdet_detect: error: %s\n", e.what());
  }
  return 1;
}
