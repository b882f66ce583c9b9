#include "yaml_field.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <system_error>

#include "sluice/istio/loader.h"

namespace sluice::istio::detail {

std::optional<int64_t> ParseDurationMs(std::string_view text) {
  // Sequence of <number><unit>, as Go's time.ParseDuration: "1h30m", "1.5s", "250ms".
  if (text.empty())
    return std::nullopt;
  double total_ms = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t j = i;
    while (j < text.size() &&
           (std::isdigit(static_cast<unsigned char>(text[j])) || text[j] == '.')) {
      ++j;
    }
    if (j == i)
      return std::nullopt;
    double value = 0;
    auto [p, ec] = std::from_chars(text.data() + i, text.data() + j, value);
    if (ec != std::errc() || p != text.data() + j)
      return std::nullopt;
    std::size_t k = j;
    while (k < text.size() && std::isalpha(static_cast<unsigned char>(text[k])))
      ++k;
    std::string_view unit = text.substr(j, k - j);
    double scale = 0;
    if (unit == "h") {
      scale = 3600e3;
    } else if (unit == "m") {
      scale = 60e3;
    } else if (unit == "s") {
      scale = 1e3;
    } else if (unit == "ms") {
      scale = 1;
    } else if (unit == "us" || unit == "µs") {
      scale = 1e-3;
    } else if (unit == "ns") {
      scale = 1e-6;
    } else {
      return std::nullopt;
    }
    total_ms += value * scale;
    i = k;
  }
  if (total_ms > 1e15)
    return std::nullopt;
  return static_cast<int64_t>(std::llround(total_ms));
}

namespace {

// Trailing ".0" and friends are not integers in Kubernetes' schema; neither are quoted
// numbers. yaml-cpp gives no tag for plain scalars, so quoted ones are told apart by tag.
bool IsQuoted(const YAML::Node& n) {
  return n.Tag() == "!";
}

std::optional<int64_t> ParseInt(const std::string& s) {
  int64_t v = 0;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (b != e && *b == '+')
    ++b;
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || p != e || b == e)
    return std::nullopt;
  return v;
}

std::optional<double> ParseDouble(const std::string& s) {
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty() || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

}  // namespace

Field Field::operator[](const std::string& key) const {
  if (!node_.IsMap())
    return Field(YAML::Node(YAML::NodeType::Undefined), path_ + "." + key, errors_);
  std::string child = path_.empty() ? key : path_ + "." + key;
  return Field(node_[key], std::move(child), errors_);
}

std::vector<Field> Field::List(const char* of) const {
  std::vector<Field> out;
  if (!present())
    return out;
  if (!node_.IsSequence()) {
    Error(std::string("must be ") + of);
    return out;
  }
  out.reserve(node_.size());
  for (std::size_t i = 0; i < node_.size(); ++i) {
    out.emplace_back(node_[i], path_ + "[" + std::to_string(i) + "]", errors_);
  }
  return out;
}

std::vector<std::pair<std::string, Field>> Field::Entries() const {
  std::vector<std::pair<std::string, Field>> out;
  if (!present())
    return out;
  if (!node_.IsMap()) {
    Error("must be a mapping");
    return out;
  }
  for (const auto& kv : node_) {
    if (!kv.first.IsScalar()) {
      Error("keys must be strings");
      return out;
    }
    std::string key = kv.first.Scalar();
    out.emplace_back(key, Field(kv.second, path_.empty() ? key : path_ + "." + key, errors_));
  }
  return out;
}

std::optional<std::string> Field::Str() const {
  if (!present())
    return std::nullopt;
  if (!node_.IsScalar()) {
    Error("must be a string");
    return std::nullopt;
  }
  return node_.Scalar();
}

std::string Field::Required() const {
  auto s = Str();
  if (!present() || (s && s->empty())) {
    Error("required");
    return {};
  }
  return s.value_or("");
}

std::optional<int64_t> Field::Int(int64_t lo, int64_t hi) const {
  if (!present())
    return std::nullopt;
  std::string range = std::to_string(lo) + ".." + std::to_string(hi);
  std::optional<int64_t> v;
  if (node_.IsScalar() && !IsQuoted(node_))
    v = ParseInt(node_.Scalar());
  if (!v || *v < lo || *v > hi) {
    Error("must be an integer " + range);
    return std::nullopt;
  }
  return v;
}

std::optional<uint32_t> Field::Port() const {
  if (!present())
    return std::nullopt;
  std::optional<int64_t> v;
  if (node_.IsScalar() && !IsQuoted(node_))
    v = ParseInt(node_.Scalar());
  if (!v || *v < 1 || *v > 65535) {
    Error("must be a port number 1..65535");
    return std::nullopt;
  }
  return static_cast<uint32_t>(*v);
}

std::optional<double> Field::Number(double lo, double hi) const {
  if (!present())
    return std::nullopt;
  std::optional<double> v;
  if (node_.IsScalar() && !IsQuoted(node_))
    v = ParseDouble(node_.Scalar());
  if (!v || *v < lo || *v > hi) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "must be a number %g..%g", lo, hi);
    Error(buf);
    return std::nullopt;
  }
  return v;
}

std::optional<bool> Field::Bool() const {
  if (!present())
    return std::nullopt;
  if (node_.IsScalar() && !IsQuoted(node_)) {
    const std::string& s = node_.Scalar();
    if (s == "true" || s == "True" || s == "TRUE")
      return true;
    if (s == "false" || s == "False" || s == "FALSE")
      return false;
  }
  Error("must be true or false");
  return std::nullopt;
}

std::optional<int64_t> Field::DurationMs() const {
  auto s = Str();
  if (!s)
    return std::nullopt;
  auto ms = ParseDurationMs(*s);
  if (!ms)
    Error("must be a duration such as \"1.5s\" or \"100ms\" (got \"" + *s + "\")");
  return ms;
}

std::vector<std::string> Field::StrList() const {
  std::vector<std::string> out;
  if (!present())
    return out;
  if (!node_.IsSequence()) {
    Error("must be a list of strings");
    return out;
  }
  for (std::size_t i = 0; i < node_.size(); ++i) {
    if (!node_[i].IsScalar()) {
      errors_->Add(path_ + "[" + std::to_string(i) + "]", "must be a string");
      return out;
    }
    out.push_back(node_[i].Scalar());
  }
  return out;
}

std::map<std::string, std::string> Field::StrMap() const {
  std::map<std::string, std::string> out;
  for (auto& [k, f] : Entries()) {
    auto v = f.Str();
    if (v)
      out[k] = *v;
  }
  return out;
}

}  // namespace sluice::istio::detail
