// The wire protocol between the sluice-cni plugin and the agent's CNI server.
//
// One request, one reply per Unix-socket connection. Every message is a frame:
//
//   offset 0  u32 magic    0x534C434E ("SLCN"), network byte order
//   offset 4  u16 version  kProtocolVersion
//   offset 6  u16 kind     FrameKind (request or reply)
//   offset 8  u32 length   body length in bytes, at most kMaxBodySize
//   offset 12 body         UTF-8 JSON, `length` bytes
//
// The fixed header lets either side reject a stray peer, an incompatible version or
// an oversized body before reading (or allocating for) the body.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::cni {

inline constexpr std::uint32_t kProtocolMagic = 0x534C434E;  // "SLCN"
inline constexpr std::uint16_t kProtocolVersion = 1;
inline constexpr std::size_t kHeaderSize = 12;
inline constexpr std::uint32_t kMaxBodySize = 64 * 1024;

enum class FrameKind : std::uint16_t { kRequest = 1, kReply = 2 };

struct FrameHeader {
  std::uint32_t magic = kProtocolMagic;
  std::uint16_t version = kProtocolVersion;
  FrameKind kind = FrameKind::kRequest;
  std::uint32_t length = 0;
};

// CNI well-known error codes (CNI spec 1.0.0) and Sluice's own (100+).
namespace codes {
inline constexpr int kIncompatibleVersion = 1;
inline constexpr int kUnsupportedField = 2;
inline constexpr int kUnknownContainer = 3;
inline constexpr int kInvalidEnvironment = 4;
inline constexpr int kIoFailure = 5;
inline constexpr int kDecodeFailure = 6;
inline constexpr int kInvalidNetworkConfig = 7;
inline constexpr int kTryAgainLater = 11;
// The agent was reached and refused or failed the pod set-up.
inline constexpr int kAgentFailed = 100;
// The agent was reached but the exchange broke (bad frame, protocol mismatch).
inline constexpr int kAgentProtocol = 101;
// sluice-cni itself failed unexpectedly (a bug or out of memory).
inline constexpr int kPluginInternal = 102;
}  // namespace codes

enum class Operation { kAdd, kDel, kCheck };
std::string_view OperationName(Operation op);

// What the plugin tells the agent about one pod sandbox.
struct CniRequest {
  Operation op = Operation::kAdd;
  std::string cni_version;
  std::string container_id;
  std::string netns;  // path; may be empty on DEL
  std::string ifname;
  std::string pod_name;
  std::string pod_namespace;
  std::string pod_uid;
  std::vector<std::string> ips;  // CIDR strings from prevResult, e.g. "10.1.0.5/24"
};

struct CniReply {
  bool ok = true;
  bool enrolled = false;  // ADD/CHECK: whether the agent put the pod in the mesh
  int code = 0;           // when !ok: a CNI error code (see codes::)
  std::string msg;
  std::string details;
};

// Header bytes for a body of `length` bytes.
std::array<std::byte, kHeaderSize> EncodeHeader(FrameKind kind, std::uint32_t length);
// Checks magic, version, kind and the size bound.
Result<FrameHeader> DecodeHeader(std::span<const std::byte, kHeaderSize> bytes);

// A full frame (header + body); fails when the body exceeds kMaxBodySize.
Result<std::string> EncodeFrame(FrameKind kind, std::string_view body);

std::string SerializeRequest(const CniRequest& req);
Result<CniRequest> ParseRequest(std::string_view body);
std::string SerializeReply(const CniReply& reply);
Result<CniReply> ParseReply(std::string_view body);

// Blocking I/O with an absolute deadline (poll-based, the fd may be non-blocking).
using Deadline = std::chrono::steady_clock::time_point;
Result<void> WriteFrame(int fd, FrameKind kind, std::string_view body, Deadline deadline);
// Reads one frame of the expected kind and returns its body.
Result<std::string> ReadFrame(int fd, FrameKind expected, Deadline deadline);

// The plugin side: connect to `socket_path`, send the request, wait for the reply.
// Errors distinguish "agent unreachable" (Error::code = errno of connect, e.g.
// ENOENT/ECONNREFUSED, or ETIMEDOUT) from protocol errors (code 0).
Result<CniReply> CallAgent(const std::string& socket_path, const CniRequest& req,
                           std::chrono::milliseconds timeout);

}  // namespace sluice::cni
