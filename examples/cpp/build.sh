#!/usr/bin/env bash
# Build clumpdet_detect against the ONNX Runtime library of the Python wheel.
#
#   examples/cpp/build.sh            # -> examples/cpp/build/clumpdet_detect
#
# Library: libonnxruntime.so.* shipped inside the PyPI `onnxruntime` wheel (C API,
#   glibc >= 2.28), found through $PYTHON (default: python3 on PATH).
# Headers: the wheel has none, so they come from Debian 13 (trixie)'s
#   `libonnxruntime-dev` (MIT), downloaded at build time with a *private* apt
#   configuration under the build directory (the system's apt state is never
#   touched, no root needed) and unpacked with `dpkg -x`. Headers of an older
#   ONNX Runtime work with a newer library: the C API is versioned
#   (OrtGetApiBase()->GetApi(ORT_API_VERSION)) and stays backward compatible.
#   Never commit the downloaded headers; the build directory is git-ignored.
#
# Environment:
#   PYTHON          interpreter whose onnxruntime to link (default python3)
#   BUILD_DIR       output directory (default examples/cpp/build)
#   CXX             C++17 compiler (default c++)
#   DEBIAN_MIRROR   (default http://deb.debian.org/debian)
#   DEBIAN_KEYRING  keyring that signs trixie (default /usr/share/keyrings/debian-archive-keyring.gpg);
#                   without one the pinned .deb checksum below is verified instead.
#
# Exit status: 0 built (or up to date); 3 a prerequisite is missing (compiler,
# onnxruntime wheel, apt/dpkg, network); 1 anything else (a real build error).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
BUILD_DIR="${BUILD_DIR:-$HERE/build}"
CXX="${CXX:-c++}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING="${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
# Used only when no Debian keyring is available to verify the archive signature.
PINNED_VERSION="1.21.0+dfsg-1"
PINNED_SHA256="14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"

missing() { echo "build.sh: prerequisite missing: $*" >&2; exit 3; }

command -v "$CXX" >/dev/null 2>&1 || missing "no C++ compiler ($CXX); install g++ or set CXX"
ORT_DIR="$("$PYTHON" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))' 2>/dev/null)" \
  || missing "$PYTHON cannot import onnxruntime (pip install onnxruntime)"
ORT_LIB="$(ls "$ORT_DIR"/capi/libonnxruntime.so.* 2>/dev/null | head -n 1 || true)"
[ -n "$ORT_LIB" ] || missing "no libonnxruntime.so.* in $ORT_DIR/capi (this onnxruntime wheel has no C library)"

mkdir -p "$BUILD_DIR"
INC="$BUILD_DIR/ort-headers/usr/include/onnxruntime"

fetch_headers() {
  command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 \
    || missing "apt-get and dpkg are needed to fetch Debian's libonnxruntime-dev headers"
  local apt="$BUILD_DIR/apt" arch
  arch="$(dpkg --print-architecture)"
  rm -rf "$apt" "$BUILD_DIR/ort-headers"
  mkdir -p "$apt/etc/apt/apt.conf.d" "$apt/etc/apt/preferences.d" "$apt/etc/apt/sources.list.d" \
    "$apt/state/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
  : > "$apt/status"
  local pkg="libonnxruntime-dev" check_sha=""
  if [ -r "$KEYRING" ]; then
    echo "deb [signed-by=$KEYRING] $MIRROR trixie main" > "$apt/etc/apt/sources.list"
  else
    echo "build.sh: no Debian keyring at $KEYRING; verifying the pinned sha256 of $pkg $PINNED_VERSION instead" >&2
    echo "deb [trusted=yes] $MIRROR trixie main" > "$apt/etc/apt/sources.list"
    pkg="$pkg=$PINNED_VERSION" check_sha="$PINNED_SHA256"
  fi
  local opts=(-o "Dir=$apt" -o "Dir::Etc=$apt/etc/apt" -o "Dir::State=$apt/state"
              -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache" -o "APT::Architecture=$arch"
              -o "Debug::NoLocking=1" -o "Acquire::Languages=none" -o "APT::Sandbox::User=$(id -un)"
              -o "Dir::Etc::trusted=/dev/null" -o "Dir::Etc::trustedparts=$apt/etc/apt/trusted.gpg.d")
  apt-get "${opts[@]}" -q update >"$apt/update.log" 2>&1 \
    || { tail -n 5 "$apt/update.log" >&2; missing "cannot reach the Debian mirror $MIRROR (network?)"; }
  (cd "$apt/debs" && apt-get "${opts[@]}" -q download "$pkg") >"$apt/download.log" 2>&1 \
    || { tail -n 5 "$apt/download.log" >&2; missing "apt-get download $pkg from $MIRROR trixie failed (network?)"; }
  local deb
  deb="$(ls "$apt"/debs/libonnxruntime-dev_*.deb)"
  if [ -n "$check_sha" ]; then
    echo "$check_sha  $deb" | sha256sum -c --quiet - || { echo "build.sh: checksum mismatch for $deb" >&2; exit 1; }
  fi
  dpkg -x "$deb" "$BUILD_DIR/ort-headers"
  [ -f "$INC/onnxruntime_cxx_api.h" ] || { echo "build.sh: $deb has no onnxruntime_cxx_api.h" >&2; exit 1; }
  echo "build.sh: headers from $(basename "$deb")" >&2
}

[ -f "$INC/onnxruntime_cxx_api.h" ] || fetch_headers

# The wheel's library has SONAME libonnxruntime.so.1 but ships only the full
# version name: link and run through a symlink in the build dir (rpath).
mkdir -p "$BUILD_DIR/lib"
ln -sfn "$ORT_LIB" "$BUILD_DIR/lib/libonnxruntime.so.1"
ln -sfn "$ORT_LIB" "$BUILD_DIR/lib/libonnxruntime.so"

SRC="$HERE/clumpdet_detect.cpp"
BIN="$BUILD_DIR/clumpdet_detect"
CMD=("$CXX" -std=c++17 -O2 -Wall -Wextra -I"$INC" "$SRC" -o "$BIN"
     -L"$BUILD_DIR/lib" -lonnxruntime -Wl,-rpath,"$BUILD_DIR/lib")
STAMP="$BUILD_DIR/clumpdet_detect.cmd"
if [ -x "$BIN" ] && [ "$BIN" -nt "$SRC" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "${CMD[*]} $ORT_LIB" ]; then
  echo "build.sh: $BIN is up to date" >&2
  exit 0
fi
"${CMD[@]}"
echo "${CMD[*]} $ORT_LIB" > "$STAMP"
echo "build.sh: built $BIN (onnxruntime $(basename "$ORT_LIB"))" >&2
