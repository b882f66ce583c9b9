// The one CEL form Sluice evaluates in Istio's metric tag values: a plain string literal.
// A Telemetry tagOverride's `value` becomes the istio.stats filter's dimension (a CEL
// expression istio/proxy evaluates per request); the loader accepts, and the proxy
// serves, only values this reads, so a label is never set from an expression Sluice
// would get wrong.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace sluice::cel {

// 'x' or "x" (blanks around it allowed) with no escape, quote or line break inside: its
// value. Anything else — raw, bytes and triple-quoted literals, concatenations,
// attributes such as request.host — is nullopt.
inline std::optional<std::string> StringLiteral(std::string_view e) {
  while (!e.empty() && (e.front() == ' ' || e.front() == '\t'))
    e.remove_prefix(1);
  while (!e.empty() && (e.back() == ' ' || e.back() == '\t'))
    e.remove_suffix(1);
  if (e.size() < 2 || (e.front() != '\'' && e.front() != '"') || e.back() != e.front())
    return std::nullopt;
  std::string_view inner = e.substr(1, e.size() - 2);
  if (inner.find_first_of("'\"\\\n\r") != std::string_view::npos)
    return std::nullopt;
  return std::string(inner);
}

// A Prometheus label name Sluice can render as given: [a-zA-Z_][a-zA-Z0-9_]*, not
// starting with "__" (reserved).
inline bool PrometheusLabelName(std::string_view n) {
  if (n.empty() || (n[0] >= '0' && n[0] <= '9') || n.starts_with("__"))
    return false;
  for (char c : n) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
      return false;
  }
  return true;
}

}  // namespace sluice::cel
