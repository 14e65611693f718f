# CMake toolchain file: cross-compile for 64-bit Arm Linux with Debian's cross compiler
# (apt-get install g++-aarch64-linux-gnu). NEON (AdvSIMD) is part of the AArch64 base ISA,
# so no -m flag is needed for it.
#
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#
# Override the compiler prefix (another vendor's toolchain) with -DONNXVQ_CROSS_PREFIX=...
# and the target root with -DONNXVQ_CROSS_ROOT=...
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(ONNXVQ_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "Prefix of the cross compiler's tools")
set(ONNXVQ_CROSS_ROOT "/usr/aarch64-linux-gnu" CACHE PATH "Root of the aarch64 libraries and headers")

set(CMAKE_C_COMPILER "${ONNXVQ_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${ONNXVQ_CROSS_PREFIX}g++")

# Libraries and headers come from the target root only; programs (cmake helpers, python)
# from the host. Include dirs given by absolute path (the ORT headers) are used as is.
set(CMAKE_FIND_ROOT_PATH "${ONNXVQ_CROSS_ROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# try_run() cannot run aarch64 programs on the build machine unless qemu is given:
# -DCMAKE_CROSSCOMPILING_EMULATOR="qemu-aarch64;-L;/usr/aarch64-linux-gnu" also lets ctest
# run the tests.
