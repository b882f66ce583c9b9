#include "sluice/inspect/enroll.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <set>
#include <vector>

namespace sluice::inspect {
namespace {

struct Edit {
  std::size_t pos = 0;
  std::size_t erase = 0;
  std::string insert;
};

struct DocContext {
  std::string_view doc;  // the document's text (marks are relative to it)
  std::size_t base = 0;  // its offset in the file
  std::string where;     // "FILE: document N (Kind ns/name)"
  std::vector<Edit>* edits;
};

const std::string kLabel(kEnrolmentLabel);
const std::string kValue(kEnrolmentValue);

bool IsFlow(const YAML::Node& n) {
  return n.Style() == YAML::EmitterStyle::Flow;
}

std::string Indent(int column) {
  return std::string(static_cast<std::size_t>(column), ' ');
}

// The key node named `key` in map `m` (for its position), or an invalid node.
YAML::Node KeyNode(const YAML::Node& m, const std::string& key) {
  for (auto it = m.begin(); it != m.end(); ++it) {
    if (it->first.IsScalar() && it->first.Scalar() == key)
      return it->first;
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

// Position just after '{' of a flow mapping whose node mark is at the brace.
std::size_t AfterBrace(const DocContext& c, const YAML::Node& flow_map) {
  std::size_t p = static_cast<std::size_t>(flow_map.Mark().pos);
  while (p < c.doc.size() && c.doc[p] != '{')
    ++p;
  return p + 1;
}

void Add(const DocContext& c, std::size_t pos, std::size_t erase, std::string insert) {
  c.edits->push_back({c.base + pos, erase, std::move(insert)});
}

// Length of a scalar as written at `pos`: quoted to its closing quote, plain to the end
// of the line or a comment, trailing blanks excluded.
std::size_t ScalarLength(std::string_view doc, std::size_t pos) {
  if (pos >= doc.size())
    return 0;
  char q = doc[pos];
  if (q == '"' || q == '\'') {
    for (std::size_t i = pos + 1; i < doc.size(); ++i) {
      if (q == '"' && doc[i] == '\\') {
        ++i;
        continue;
      }
      if (doc[i] == q) {
        if (q == '\'' && i + 1 < doc.size() && doc[i + 1] == '\'') {
          ++i;
          continue;
        }
        return i + 1 - pos;
      }
    }
    return doc.size() - pos;
  }
  std::size_t end = pos;
  while (end < doc.size() && doc[end] != '\n' && doc[end] != ',' && doc[end] != '}' &&
         !(doc[end] == '#' && end > pos && doc[end - 1] == ' '))
    ++end;
  while (end > pos && (doc[end - 1] == ' ' || doc[end - 1] == '\t' || doc[end - 1] == '\r'))
    --end;
  return end - pos;
}

// Inserts "key: value" content into an existing mapping `m` (flow or block, maybe empty),
// `block_text(indent)` giving the lines for block style at the map's indentation.
template <class BlockText>
void InsertIntoMap(const DocContext& c, const YAML::Node& m, const std::string& flow_text,
                   BlockText block_text) {
  if (IsFlow(m)) {
    Add(c, AfterBrace(c, m), 0, m.size() == 0 ? flow_text : flow_text + ", ");
    return;
  }
  // A block mapping's mark is its first key; insert before it at the same column.
  Add(c, static_cast<std::size_t>(m.Mark().pos), 0, block_text(m.Mark().column));
}

// Sets the label in `meta` (a pod's metadata mapping). `meta_key` is the "metadata" key
// node (for a null metadata value).
Result<void> LabelMeta(const DocContext& c, const YAML::Node& parent, const std::string& path) {
  const std::string flow_label = fmt::format("\"{}\": \"{}\"", kLabel, kValue);
  YAML::Node meta = parent["metadata"];
  if (!meta || meta.IsNull()) {
    if (meta && meta.IsNull()) {
      // "metadata:" with nothing after it.
      YAML::Node key = KeyNode(parent, "metadata");
      std::size_t pos =
          static_cast<std::size_t>(key.Mark().pos) + ScalarLength(c.doc, key.Mark().pos);
      while (pos < c.doc.size() && c.doc[pos] != ':')
        ++pos;
      Add(c, pos + 1, 0, fmt::format(" {{\"labels\": {{{}}}}}", flow_label));
      return {};
    }
    InsertIntoMap(c, parent, fmt::format("\"metadata\": {{\"labels\": {{{}}}}}", flow_label),
                  [&](int col) {
                    return fmt::format("metadata:\n{}labels:\n{}{}: {}\n{}", Indent(col + 2),
                                       Indent(col + 4), kLabel, kValue, Indent(col));
                  });
    return {};
  }
  if (!meta.IsMap())
    return Fail(fmt::format("{}: {}.metadata: must be a mapping", c.where, path));
  YAML::Node labels = meta["labels"];
  if (!labels || (labels.IsMap() && labels.size() == 0 && !IsFlow(labels))) {
    if (meta.size() == 0 && IsFlow(meta)) {
      Add(c, AfterBrace(c, meta), 0, fmt::format("\"labels\": {{{}}}", flow_label));
      return {};
    }
    InsertIntoMap(c, meta, fmt::format("\"labels\": {{{}}}", flow_label), [&](int col) {
      return fmt::format("labels:\n{}{}: {}\n{}", Indent(col + 2), kLabel, kValue, Indent(col));
    });
    return {};
  }
  if (labels.IsNull()) {
    YAML::Node key = KeyNode(meta, "labels");
    std::size_t pos =
        static_cast<std::size_t>(key.Mark().pos) + ScalarLength(c.doc, key.Mark().pos);
    while (pos < c.doc.size() && c.doc[pos] != ':')
      ++pos;
    Add(c, pos + 1, 0, fmt::format(" {{{}}}", flow_label));
    return {};
  }
  if (!labels.IsMap())
    return Fail(fmt::format("{}: {}.metadata.labels: must be a mapping", c.where, path));
  if (YAML::Node v = labels[kLabel]; v) {
    if (v.IsScalar() && v.Scalar() == kValue)
      return {};
    // Another value ("none"): kube-inject overrides, so does enroll.
    std::size_t pos = static_cast<std::size_t>(v.Mark().pos);
    Add(c, pos, ScalarLength(c.doc, pos), IsFlow(labels) ? "\"" + kValue + "\"" : kValue);
    return {};
  }
  InsertIntoMap(c, labels, flow_label,
                [&](int col) { return fmt::format("{}: {}\n{}", kLabel, kValue, Indent(col)); });
  return {};
}

const std::set<std::string> kTemplated = {"Deployment", "StatefulSet",           "DaemonSet",
                                          "ReplicaSet", "ReplicationController", "Job"};

Result<int> LabelObject(const DocContext& c0, const YAML::Node& obj, const std::string& path) {
  if (!obj.IsMap())
    return 0;
  const std::string kind = obj["kind"] && obj["kind"].IsScalar() ? obj["kind"].Scalar() : "";
  DocContext c = c0;
  if (path.empty() || path.starts_with("items")) {
    std::string ns = "default", name;
    if (auto m = obj["metadata"]; m && m.IsMap()) {
      if (m["namespace"] && m["namespace"].IsScalar())
        ns = m["namespace"].Scalar();
      if (m["name"] && m["name"].IsScalar())
        name = m["name"].Scalar();
    }
    if (!kind.empty())
      c.where += fmt::format(" ({} {}/{})", kind, ns, name);
  }
  const std::string prefix = path.empty() ? "" : path + ".";
  if (kind == "List") {
    YAML::Node items = obj["items"];
    if (!items)
      return 0;
    if (!items.IsSequence())
      return Fail(fmt::format("{}: {}items: must be a sequence", c.where, prefix));
    int n = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      auto r = LabelObject(c, items[i], fmt::format("{}items[{}]", prefix, i));
      if (!r)
        return r;
      n += *r;
    }
    return n;
  }
  if (kind == "Pod") {
    SLUICE_RETURN_IF_ERROR(LabelMeta(c, obj, path.empty() ? "" : path));
    return 1;
  }
  // Child lookups by value: assigning to a yaml-cpp Node would write through it.
  auto child = [](const YAML::Node& n, const char* key) {
    return n && n.IsMap() ? n[key] : YAML::Node(YAML::NodeType::Undefined);
  };
  std::string tpath;
  const YAML::Node tmpl = [&] {
    if (kTemplated.contains(kind)) {
      tpath = prefix + "spec.template";
      return child(child(obj, "spec"), "template");
    }
    if (kind == "CronJob") {
      tpath = prefix + "spec.jobTemplate.spec.template";
      return child(child(child(child(obj, "spec"), "jobTemplate"), "spec"), "template");
    }
    return YAML::Node(YAML::NodeType::Undefined);
  }();
  if (tpath.empty())
    return 0;  // not a workload: unchanged
  if (!tmpl || !tmpl.IsMap())
    return Fail(fmt::format("{}: {}: required, a pod template", c.where, tpath));
  SLUICE_RETURN_IF_ERROR(LabelMeta(c, tmpl, tpath));
  return 1;
}

// Document boundaries: a line starting with "---" (followed by nothing, a blank or a
// comment) separates documents. Returns [start, end) offsets of each document's body.
std::vector<std::pair<std::size_t, std::size_t>> SplitDocuments(std::string_view text) {
  std::vector<std::pair<std::size_t, std::size_t>> docs;
  std::size_t start = 0, line = 0;
  while (line <= text.size()) {
    std::size_t eol = text.find('\n', line);
    std::size_t next = eol == std::string_view::npos ? text.size() + 1 : eol + 1;
    std::string_view l =
        text.substr(line, (eol == std::string_view::npos ? text.size() : eol) - line);
    if (l.starts_with("---") && (l.size() == 3 || l[3] == ' ' || l[3] == '\t' || l[3] == '\r')) {
      if (line > start || !docs.empty() || line > 0)
        docs.emplace_back(start, line);
      start = std::min(next, text.size());
    }
    line = next;
  }
  docs.emplace_back(start, text.size());
  return docs;
}

}  // namespace

Result<EnrollResult> Enroll(std::string_view text, const std::string& file) {
  std::vector<Edit> edits;
  EnrollResult result;
  auto docs = SplitDocuments(text);
  int number = 0;
  for (const auto& [start, end] : docs) {
    ++number;
    std::string_view body = text.substr(start, end - start);
    DocContext c{body, start, fmt::format("{}: document {}", file, number), &edits};
    YAML::Node root;
    try {
      root = YAML::Load(std::string(body));
    } catch (const YAML::Exception& e) {
      return Fail(fmt::format("{}: line {}: {}", c.where, e.mark.line + 1, e.msg));
    }
    if (!root || root.IsNull())
      continue;
    if (!root.IsMap())
      return Fail(c.where + ": not a mapping (expected a Kubernetes object)");
    try {
      auto n = LabelObject(c, root, "");
      SLUICE_RETURN_IF_ERROR(n);
      result.workloads += *n;
    } catch (const YAML::Exception& e) {
      return Fail(fmt::format("{}: {}", c.where, e.msg));
    }
  }
  std::stable_sort(edits.begin(), edits.end(),
                   [](const Edit& a, const Edit& b) { return a.pos > b.pos; });
  std::string out(text);
  for (const auto& e : edits)
    out.replace(e.pos, e.erase, e.insert);
  result.text = std::move(out);
  return result;
}

}  // namespace sluice::inspect
