// The proxy's string and regex matcher compiler (matchers.h).
#include "matchers.h"

namespace sluice::proxy {

Result<std::shared_ptr<const RE2>> CompileRegex(const std::string& pattern,
                                                const std::string& where) {
  auto re = std::make_shared<const RE2>(pattern, RE2::Quiet);
  if (!re->ok())
    return Fail(where + ": invalid regex \"" + pattern + "\": " + re->error());
  return re;
}

Result<StringMatcher> CompileStringMatcher(const envoy::type::matcher::v3::StringMatcher& m,
                                           const std::string& where, std::string_view sep) {
  using SM = envoy::type::matcher::v3::StringMatcher;
  StringMatcher out;
  out.ignore_case = m.ignore_case();
  switch (m.match_pattern_case()) {
    case SM::kExact:
      out.kind = StringMatcher::Kind::kExact;
      out.value = m.exact();
      break;
    case SM::kPrefix:
      out.kind = StringMatcher::Kind::kPrefix;
      out.value = m.prefix();
      break;
    case SM::kSuffix:
      out.kind = StringMatcher::Kind::kSuffix;
      out.value = m.suffix();
      break;
    case SM::kContains:
      out.kind = StringMatcher::Kind::kContains;
      out.value = m.contains();
      break;
    case SM::kSafeRegex: {
      // Envoy: RE2, the whole value must match; ignore_case does not apply.
      out.kind = StringMatcher::Kind::kRegex;
      auto re = CompileRegex(m.safe_regex().regex(), where + std::string(sep) + "safe_regex");
      SLUICE_RETURN_IF_ERROR(re);
      out.regex = *re;
      break;
    }
    case SM::kCustom:
      return Fail(where + std::string(sep) + "custom: string matcher extensions are not supported");
    default:
      return Fail(where + ": no match pattern");
  }
  return out;
}

}  // namespace sluice::proxy
