// The access log's vocabulary: Envoy's response flags, which a session sets as its
// request meets a failure, a limit or a fault, and which its log line prints
// (Session::LogRequest, access_log.cc, writes the line in Envoy's default format into
// the worker's log buffer).
#pragma once

#include <cstdint>

namespace sluice::proxy::engine {

// Envoy's response flags, in Envoy's bit order (the order they print in).
enum Flag : uint32_t {
  kFlagUH = 1u << 0,    // no healthy upstream
  kFlagUT = 1u << 1,    // upstream request timeout
  kFlagLR = 1u << 2,    // local reset
  kFlagUR = 1u << 3,    // upstream remote reset
  kFlagUF = 1u << 4,    // upstream connection failure
  kFlagUC = 1u << 5,    // upstream connection termination
  kFlagUO = 1u << 6,    // upstream overflow (circuit breaker)
  kFlagNR = 1u << 7,    // no route
  kFlagDI = 1u << 8,    // delay injected
  kFlagFI = 1u << 9,    // fault (abort) injected
  kFlagDC = 1u << 10,   // downstream connection termination
  kFlagURX = 1u << 11,  // retry limit exceeded
  kFlagSI = 1u << 12,   // stream idle timeout
  kFlagDPE = 1u << 13,  // downstream protocol error
  kFlagDT = 1u << 14,   // max stream duration reached (DurationTimeout)
  kFlagUPE = 1u << 15,  // upstream protocol error
  kFlagNC = 1u << 16,   // no cluster
};

// Their short names, by bit: what the access log and the Istio metrics' response_flags
// print, comma-separated in this order.
inline constexpr const char* kFlagNames[] = {"UH", "UT",  "LR", "UR",  "UF", "UC",
                                             "UO", "NR",  "DI", "FI",  "DC", "URX",
                                             "SI", "DPE", "DT", "UPE", "NC"};

}  // namespace sluice::proxy::engine
