// Loader: Kubernetes and Istio YAML files -> typed model (model.h).
//
// Reads files and directories (recursive, sorted by path, *.yaml|*.yml|*.json), splits
// each file into documents itself so that one malformed document never drops its
// neighbours, and dispatches on apiVersion/kind. Every problem is reported as
//   FILE: document N (Kind ns/name): field.path: what is wrong
// and only the offending document is skipped. Unknown kinds are warnings. A field the
// Istio networking API does not have (`spec.htttp`) is an error, as with kubectl's strict
// field validation; Kubernetes kinds are not held to their full schema.
// After loading, Validate() runs the checks that span resources (duplicate names,
// subsets a VirtualService names that no DestinationRule defines).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/istio/model.h"

namespace sluice::istio {

struct LoadResult {
  Config config;
  std::vector<std::string> errors;    // one line per rejected document
  std::vector<std::string> warnings;  // skipped kinds, ignored fields
  bool ok() const { return errors.empty(); }
};

// Loads every path (file or directory) into one Config, then runs Validate().
LoadResult LoadPaths(const std::vector<std::string>& paths);

// Adds the documents of one file's text to `out`; `file` names it in messages.
// Does not run Validate().
void LoadText(std::string_view text, const std::string& file, LoadResult& out);

// Cross-resource checks; removes what fails and records why in out.errors.
void Validate(LoadResult& out);

// The files LoadPaths would read, in order (for change detection).
std::vector<std::string> ListConfigFiles(const std::vector<std::string>& paths,
                                         std::vector<std::string>* errors);


}  // namespace sluice::istio
