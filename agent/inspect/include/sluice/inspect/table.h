// Text output shared by the inspection commands: tables aligned as Go's text/tabwriter
// aligns istioctl's (every cell but a row's last padded to its column's widest cell plus
// `padding`), and JSON rendered as YAML the way istioctl's -o yaml shows it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace sluice::inspect {

class Table {
 public:
  explicit Table(std::size_t padding) : padding_(padding) {}
  void Row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  std::string Render() const;
  std::size_t rows() const { return rows_.size(); }

 private:
  std::size_t padding_;
  std::vector<std::vector<std::string>> rows_;
};

// Block-style YAML: "key: value", sequences at the parent key's indentation, strings
// single-quoted when they would otherwise read as another type ('5000', 'true', '').
std::string JsonToYaml(const nlohmann::ordered_json& j);

}  // namespace sluice::inspect
