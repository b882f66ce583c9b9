// Value-or-error for every syscall-facing and parsing function in Sluice.
//
// Errors are values, never exceptions on the data path. An Error carries a message
// that names what failed ("map sluice_services: update: Operation not permitted"),
// so callers can add context and return it unchanged to the user.
#pragma once

#include <cerrno>
#include <cstring>
#include <expected>
#include <string>
#include <string_view>
#include <utility>

namespace sluice {

struct Error {
  std::string message;
  int code = 0;  // errno when the error came from the kernel, else 0
};

template <class T = void>
using Result = std::expected<T, Error>;

[[nodiscard]] inline std::unexpected<Error> Fail(std::string message, int code = 0) {
  return std::unexpected(Error{std::move(message), code});
}

// "what: strerror(err)", keeping err for callers that branch on it.
[[nodiscard]] inline std::unexpected<Error> FailErrno(std::string_view what, int err) {
  if (err < 0)
    err = -err;
  std::string msg(what);
  msg += ": ";
  msg += std::strerror(err);
  return std::unexpected(Error{std::move(msg), err});
}

// Prefixes an error with context on the way up: "loading dataplane: <inner>".
[[nodiscard]] inline std::unexpected<Error> Wrap(std::string_view context, const Error& inner) {
  std::string msg(context);
  msg += ": ";
  msg += inner.message;
  return std::unexpected(Error{std::move(msg), inner.code});
}

}  // namespace sluice

// Returns a failed Result's error from the enclosing function (which returns a Result
// of any type); a good one goes on. `expr` is evaluated once and may be a variable:
//   auto fd = OpenSocket();
//   SLUICE_RETURN_IF_ERROR(fd);
//   SLUICE_RETURN_IF_ERROR(Bind(*fd, addr));
#define SLUICE_RETURN_IF_ERROR(expr)                     \
  do {                                                   \
    if (auto&& sluice_result_ = (expr); !sluice_result_) \
      return std::unexpected(sluice_result_.error());    \
  } while (false)

// The same, with context on the way up: "loading config: <inner>" (as Wrap).
#define SLUICE_RETURN_IF_ERROR_CTX(expr, context)               \
  do {                                                          \
    if (auto&& sluice_result_ = (expr); !sluice_result_)        \
      return ::sluice::Wrap((context), sluice_result_.error()); \
  } while (false)
