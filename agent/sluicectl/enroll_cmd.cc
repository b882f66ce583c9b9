// `sluicectl enroll -f manifest.yaml`: the manifest with the enrolment label added to
// every workload's pods — what `istioctl kube-inject` is for a sidecar.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli.h"
#include "commands.h"
#include "sluice/inspect/enroll.h"

namespace sluice::ctl {
namespace {

struct EnrollOptions {
  std::string file;
  std::string output;
};

void RunEnroll(const EnrollOptions& o) {
  std::stringstream ss;
  std::string name = o.file;
  if (o.file == "-") {
    ss << std::cin.rdbuf();
    name = "<stdin>";
  } else {
    std::ifstream in(o.file);
    if (!in)
      Die("enroll", o.file + ": cannot read");
    ss << in.rdbuf();
  }
  auto r = inspect::Enroll(ss.str(), name);
  if (!r)
    Die("enroll", r.error().message);
  if (o.output.empty()) {
    std::cout << r->text;
    std::cout.flush();
    return;
  }
  // Written whole or not at all.
  const std::string tmp = o.output + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << r->text;
    if (!out.flush())
      Die("enroll", o.output + ": cannot write");
  }
  if (std::rename(tmp.c_str(), o.output.c_str()) != 0) {
    std::remove(tmp.c_str());
    Die("enroll", o.output + ": cannot write");
  }
}

}  // namespace

void AddEnrollCommand(CLI::App& app) {
  auto o = std::make_shared<EnrollOptions>();
  auto* cmd = app.add_subcommand(
      "enroll",
      "Print a manifest with istio.io/dataplane-mode: sluice added to every workload's pods "
      "(as istioctl kube-inject). Only the label lines are added: comments, order and the "
      "other documents stay as written");
  cmd->alias("enrol");
  cmd->add_option("-f,--filename", o->file,
                  "the manifest (multi-document YAML or JSON; - for stdin)")
      ->required();
  cmd->add_option("-o,--output", o->output, "write the result to this file instead of stdout");
  cmd->callback([o] { RunEnroll(*o); });
}

}  // namespace sluice::ctl
