// Field: a YAML node together with its path in the document ("spec.http[0].route[1]"),
// so that every type or value error names exactly the field that was wrong.
//
// Errors are collected, not thrown: the first error of a document is kept in the shared
// FieldErrors and readers return a neutral value after it, so decoding code reads
// straight-line. The caller drops the whole document when FieldErrors has an error.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sluice::istio::detail {

// Durations as Istio writes them, as Go's time.ParseDuration reads them ("1.5s", "100ms",
// "2m", "1h30m"); nullopt if malformed. Field::DurationMs reads them.
std::optional<int64_t> ParseDurationMs(std::string_view text);

struct FieldErrors {
  std::optional<std::string> first;  // "spec.hosts: must be a list of strings"
  void Add(const std::string& path, const std::string& what) {
    if (!first)
      first = path.empty() ? what : path + ": " + what;
  }
  bool failed() const { return first.has_value(); }
};

class Field {
 public:
  Field(YAML::Node node, std::string path, FieldErrors* errors)
      : node_(Defined(std::move(node))), path_(std::move(path)), errors_(errors) {}

  const std::string& path() const { return path_; }
  bool present() const { return node_.IsDefined() && !node_.IsNull(); }
  bool is_map() const { return node_.IsMap(); }
  bool is_list() const { return node_.IsSequence(); }
  bool is_scalar() const { return node_.IsScalar(); }
  const YAML::Node& node() const { return node_; }

  void Error(const std::string& what) const { errors_->Add(path_, what); }

  // Child of a mapping; absent (not an error) when this is not a map or lacks the key.
  Field operator[](const std::string& key) const;

  // Elements of a sequence; an error when present but not a sequence.
  std::vector<Field> List(const char* of = "a list") const;
  // Entries of a mapping; an error when present but not a mapping.
  std::vector<std::pair<std::string, Field>> Entries() const;

  // Scalars. Each reports "must be ..." when present with the wrong type.
  std::optional<std::string> Str() const;
  std::string StrOr(std::string fallback) const { return Str().value_or(std::move(fallback)); }
  std::string Required() const;  // error "required" when absent or empty
  std::optional<int64_t> Int(int64_t lo, int64_t hi) const;
  std::optional<uint32_t> Port() const;  // integer 1..65535
  std::optional<double> Number(double lo, double hi) const;
  std::optional<bool> Bool() const;
  std::optional<int64_t> DurationMs() const;  // "1.5s", "100ms", "2m", "1h"

  std::vector<std::string> StrList() const;
  std::map<std::string, std::string> StrMap() const;

 private:
  // yaml-cpp's missing-key nodes throw on every query but IsDefined(); keep a plain
  // undefined node instead so absent fields read as "not present".
  static YAML::Node Defined(YAML::Node n) {
    return n.IsDefined() ? n : YAML::Node(YAML::NodeType::Undefined);
  }
  YAML::Node node_;
  std::string path_;
  FieldErrors* errors_;
};

}  // namespace sluice::istio::detail
