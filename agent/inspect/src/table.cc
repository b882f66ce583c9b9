#include "sluice/inspect/table.h"

#include <algorithm>
#include <cctype>

namespace sluice::inspect {

std::string Table::Render() const {
  std::vector<std::size_t> width;
  for (const auto& row : rows_) {
    // The last cell of a row is not part of a column (as in text/tabwriter).
    for (std::size_t i = 0; i + 1 < row.size(); ++i) {
      if (width.size() <= i)
        width.resize(i + 1, 0);
      width[i] = std::max(width[i], row[i].size());
    }
  }
  std::string out;
  for (const auto& row : rows_) {
    for (std::size_t i = 0; i < row.size(); ++i) {
      out += row[i];
      if (i + 1 < row.size())
        out.append(width[i] + padding_ - row[i].size(), ' ');
    }
    out += '\n';
  }
  return out;
}

namespace {

bool LooksLikeNumber(const std::string& s) {
  if (s.empty())
    return false;
  std::size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  bool digit = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (std::isdigit(static_cast<unsigned char>(c)))
      digit = true;
    else if (c != '.' && c != 'e' && c != 'E' && c != '-' && c != '+' && c != '_')
      return false;
  }
  return digit;
}

bool NeedsQuotes(const std::string& s) {
  if (s.empty() || LooksLikeNumber(s))
    return true;
  static const char* kReserved[] = {"true",  "false", "yes", "no", "on",  "off",  "null", "~",
                                    "True",  "False", "Yes", "No", "On",  "Off",  "Null", "TRUE",
                                    "FALSE", "YES",   "NO",  "ON", "OFF", "NULL", "y",    "n"};
  for (const char* r : kReserved) {
    if (s == r)
      return true;
  }
  if (std::isspace(static_cast<unsigned char>(s.front())) ||
      std::isspace(static_cast<unsigned char>(s.back())))
    return true;
  if (std::string("-?:,[]{}#&*!|>'\"%@`").find(s.front()) != std::string::npos)
    return true;
  return s.find(": ") != std::string::npos || s.find(" #") != std::string::npos ||
         s.find('\n') != std::string::npos || s.back() == ':';
}

std::string Scalar(const nlohmann::ordered_json& j) {
  if (j.is_null())
    return "null";
  if (j.is_string()) {
    const auto& s = j.get_ref<const std::string&>();
    if (s.find('\n') != std::string::npos)
      return j.dump();  // a JSON string is a valid double-quoted YAML scalar
    if (!NeedsQuotes(s))
      return s;
    std::string q = "'";
    for (char c : s) {
      q += c;
      if (c == '\'')
        q += '\'';
    }
    return q + "'";
  }
  return j.dump();
}

bool IsEmptyContainer(const nlohmann::ordered_json& j) {
  return (j.is_object() || j.is_array()) && j.empty();
}

void Emit(const nlohmann::ordered_json& j, std::size_t indent, std::string& out);

void EmitValueAfterKey(const nlohmann::ordered_json& v, std::size_t indent, std::string& out) {
  if (IsEmptyContainer(v)) {
    out += v.is_object() ? " {}\n" : " []\n";
  } else if (v.is_object()) {
    out += "\n";
    Emit(v, indent + 2, out);
  } else if (v.is_array()) {
    out += "\n";
    Emit(v, indent, out);  // sequences sit at the key's indentation
  } else {
    out += " " + Scalar(v) + "\n";
  }
}

void Emit(const nlohmann::ordered_json& j, std::size_t indent, std::string& out) {
  const std::string pad(indent, ' ');
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      out += pad + (NeedsQuotes(it.key()) ? Scalar(it.key()) : it.key()) + ":";
      EmitValueAfterKey(it.value(), indent, out);
    }
  } else if (j.is_array()) {
    for (const auto& v : j) {
      if (v.is_object() && !v.empty()) {
        // "- " then the first key on the same line, the rest indented under it.
        std::string inner;
        Emit(v, indent + 2, inner);
        out += pad + "- " + inner.substr(indent + 2);
      } else if (v.is_array() && !v.empty()) {
        std::string inner;
        Emit(v, indent + 2, inner);
        out += pad + "- " + inner.substr(indent + 2);
      } else if (IsEmptyContainer(v)) {
        out += pad + (v.is_object() ? "- {}\n" : "- []\n");
      } else {
        out += pad + "- " + Scalar(v) + "\n";
      }
    }
  } else {
    out += pad + Scalar(j) + "\n";
  }
}

}  // namespace

std::string JsonToYaml(const nlohmann::ordered_json& j) {
  if (IsEmptyContainer(j))
    return j.is_object() ? "{}\n" : "[]\n";
  std::string out;
  Emit(j, 0, out);
  return out;
}

}  // namespace sluice::inspect
