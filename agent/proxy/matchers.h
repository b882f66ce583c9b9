// Compiling Envoy's string and regex matchers (type.matcher.v3.StringMatcher, RE2 safe
// regexes) into the proxy's StringMatcher: one compiler for route and header matches,
// CORS origins (compile.cc) and RBAC rules (rbac.cc), so they cannot drift apart.
#pragma once

#include <re2/re2.h>

#include <memory>
#include <string>
#include <string_view>

#include "envoy/type/matcher/v3/string.pb.h"
#include "sluice/common/result.h"
#include "sluice/proxy/config.h"

namespace sluice::proxy {

// An RE2 pattern, compiled once (errors name `where` and RE2's reason).
Result<std::shared_ptr<const RE2>> CompileRegex(const std::string& pattern,
                                                const std::string& where);
// exact, prefix, suffix, contains or safe_regex, with ignore_case. A field of `m` is named
// in errors as `where` + `sep` + field ("route x: safe_regex", "rules.header.safe_regex").
// Extensions (`custom`) and a matcher with no pattern are errors.
Result<StringMatcher> CompileStringMatcher(const envoy::type::matcher::v3::StringMatcher& m,
                                           const std::string& where, std::string_view sep = ": ");

}  // namespace sluice::proxy
