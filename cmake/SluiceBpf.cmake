# sluice_bpf_skeleton(NAME SOURCE <file.bpf.c> [DEPENDS headers...])
#
# Compiles one BPF object with clang (-target bpf -O2 -g, -mcpu=v3 for 32-bit atomics
# and ALU32; CO-RE against a vmlinux.h
# generated at build time from the running kernel's BTF), runs `bpftool gen skeleton`
# on it and exposes the result as an INTERFACE library target NAME whose include
# directory holds NAME.skel.h.

find_program(SLUICE_CLANG NAMES clang clang-16 clang-15 clang-14 REQUIRED)
find_program(SLUICE_BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin REQUIRED)
find_path(SLUICE_LIBBPF_INCLUDE bpf/bpf_helpers.h REQUIRED)

set(SLUICE_VMLINUX_BTF "/sys/kernel/btf/vmlinux" CACHE FILEPATH
    "Kernel BTF the BPF programs are compiled against (CO-RE)")
set(SLUICE_BPF_GEN_DIR "${CMAKE_BINARY_DIR}/bpf-gen")
file(MAKE_DIRECTORY "${SLUICE_BPF_GEN_DIR}")

if(NOT EXISTS "${SLUICE_VMLINUX_BTF}")
  message(FATAL_ERROR "Kernel BTF not found at ${SLUICE_VMLINUX_BTF}: Sluice needs a kernel "
                      "built with CONFIG_DEBUG_INFO_BTF=y (set SLUICE_VMLINUX_BTF to another file)")
endif()

add_custom_command(
  OUTPUT "${SLUICE_BPF_GEN_DIR}/vmlinux.h"
  COMMAND "${SLUICE_BPFTOOL}" btf dump file "${SLUICE_VMLINUX_BTF}" format c
          > "${SLUICE_BPF_GEN_DIR}/vmlinux.h.tmp"
  COMMAND ${CMAKE_COMMAND} -E rename "${SLUICE_BPF_GEN_DIR}/vmlinux.h.tmp"
          "${SLUICE_BPF_GEN_DIR}/vmlinux.h"
  DEPENDS "${SLUICE_VMLINUX_BTF}"
  COMMENT "Generating vmlinux.h from ${SLUICE_VMLINUX_BTF}"
  VERBATIM)
add_custom_target(sluice_vmlinux_h DEPENDS "${SLUICE_BPF_GEN_DIR}/vmlinux.h")

function(sluice_bpf_skeleton name)
  cmake_parse_arguments(ARG "" "SOURCE" "DEPENDS" ${ARGN})
  get_filename_component(src "${ARG_SOURCE}" ABSOLUTE)
  set(obj "${SLUICE_BPF_GEN_DIR}/${name}.bpf.o")
  set(skel "${SLUICE_BPF_GEN_DIR}/${name}.skel.h")
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
    set(target_arch "x86")
  elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
    set(target_arch "arm64")
  else()
    set(target_arch "${CMAKE_SYSTEM_PROCESSOR}")
  endif()
  add_custom_command(
    OUTPUT "${obj}"
    COMMAND "${SLUICE_CLANG}" -target bpf -mcpu=v3 -O2 -g -Wall -Werror
            -D__TARGET_ARCH_${target_arch}
            -I "${SLUICE_BPF_GEN_DIR}" -I "${PROJECT_SOURCE_DIR}/bpf/include"
            -I "${SLUICE_LIBBPF_INCLUDE}"
            -c "${src}" -o "${obj}"
    DEPENDS "${src}" ${ARG_DEPENDS} "${SLUICE_BPF_GEN_DIR}/vmlinux.h"
    COMMENT "BPF ${name}: clang -target bpf"
    VERBATIM)
  add_custom_command(
    OUTPUT "${skel}"
    COMMAND "${SLUICE_BPFTOOL}" gen skeleton "${obj}" name "${name}" > "${skel}.tmp"
    COMMAND ${CMAKE_COMMAND} -E rename "${skel}.tmp" "${skel}"
    DEPENDS "${obj}"
    COMMENT "BPF ${name}: bpftool gen skeleton"
    VERBATIM)
  add_custom_target(${name}_skel_gen ALL DEPENDS "${skel}")
  add_library(${name} INTERFACE)
  add_dependencies(${name} ${name}_skel_gen)
  target_include_directories(${name} INTERFACE "${SLUICE_BPF_GEN_DIR}")
  set_property(TARGET ${name} PROPERTY SLUICE_BPF_OBJECT "${obj}")
endfunction()
