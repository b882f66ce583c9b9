// Kernel feature probes: each loads a tiny program (or makes a map) the way the data
// plane would use the feature, so the answer is the running kernel's, not a version
// number's. A helper is missing when the verifier says "unknown func"/"invalid func";
// any other refusal (our dummy arguments) still means the kernel knows it, as libbpf's
// own libbpf_probe_bpf_helper() reads it. Unlike that one, these set the attach type the
// real program has, since some helpers exist only for some attach points.
#include "sluice/loader/kernel_features.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <span>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace sluice {

namespace {

constexpr bpf_insn Insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.off = off;
  i.imm = imm;
  return i;
}
constexpr bpf_insn Call(int32_t helper) {
  return Insn(BPF_JMP | BPF_CALL, 0, 0, 0, helper);
}
constexpr bpf_insn Return1() {
  return Insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1);
}
constexpr bpf_insn Exit() {
  return Insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
}

struct ProbeLoad {
  int err = 0;  // 0: loaded
  std::string log;
};

ProbeLoad LoadProbe(bpf_prog_type type, bpf_attach_type attach, std::span<const bpf_insn> insns) {
  std::string log(4096, '\0');
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = attach, .log_level = 1,
              .log_size = static_cast<__u32>(log.size()), .log_buf = log.data());
  int fd = bpf_prog_load(type, "sluice_probe", "GPL", insns.data(), insns.size(), &opts);
  ProbeLoad out;
  if (fd >= 0) {
    close(fd);
  } else {
    out.err = errno;
  }
  log.resize(std::strlen(log.c_str()));
  out.log = std::move(log);
  return out;
}

// Does the kernel offer `helper` to programs of this type and attach type?
Result<bool> ProbeHelper(bpf_prog_type type, bpf_attach_type attach, bpf_func_id helper) {
  const std::array<bpf_insn, 3> insns = {Call(helper), Return1(), Exit()};
  ProbeLoad r = LoadProbe(type, attach, insns);
  if (r.err == 0)
    return true;
  if (r.err == EPERM)
    return FailErrno("probing kernel features: loading a BPF program", EPERM);
  if (r.log.find("unknown func") != std::string::npos ||
      r.log.find("invalid func") != std::string::npos)
    return false;
  if (r.log.empty())  // refused before the verifier ran: the program type is unknown
    return false;
  return true;
}

// Does the kernel know this program type with this attach type at all?
Result<bool> ProbeAttachType(bpf_prog_type type, bpf_attach_type attach) {
  const std::array<bpf_insn, 2> insns = {Return1(), Exit()};
  ProbeLoad r = LoadProbe(type, attach, insns);
  if (r.err == EPERM)
    return FailErrno("probing kernel features: loading a BPF program", EPERM);
  return r.err == 0;
}

// Can a sockops program read bpf_sock_ops.sk?
Result<bool> ProbeSockOpsSk() {
  const std::array<bpf_insn, 3> insns = {Insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_2, BPF_REG_1,
                                              static_cast<int16_t>(offsetof(bpf_sock_ops, sk)), 0),
                                         Return1(), Exit()};
  ProbeLoad r = LoadProbe(BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS, insns);
  if (r.err == EPERM)
    return FailErrno("probing kernel features: loading a BPF program", EPERM);
  return r.err == 0;
}

bool HasSockoptNetnsCookie() {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    return false;
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  bool ok = getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) == 0;
  close(s);
  return ok;
}

// A feature the data plane cannot do without.
struct Required {
  std::string_view name;
  std::string_view min_kernel;
  Result<bool> (*probe)();
};

const Required kRequired[] = {
    {"kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF) for CO-RE", "5.4",
     [] -> Result<bool> { return std::filesystem::exists("/sys/kernel/btf/vmlinux"); }},
    {"bpf_get_netns_cookie in cgroup/connect4 (enrolment)", "5.7",
     [] {
       return ProbeHelper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT,
                          BPF_FUNC_get_netns_cookie);
     }},
    {"bpf_sk_storage_get in cgroup/connect4 (the dialled address per socket)", "5.10",
     [] {
       return ProbeHelper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT,
                          BPF_FUNC_sk_storage_get);
     }},
    {"cgroup/getpeername4|6 hooks", "5.8",
     [] { return ProbeAttachType(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_GETPEERNAME); }},
    {"cgroup/getsockopt hook", "5.3",
     [] { return ProbeAttachType(BPF_PROG_TYPE_CGROUP_SOCKOPT, BPF_CGROUP_GETSOCKOPT); }},
    {"BPF ring buffer (the kernel's connection log)", "5.8",
     [] -> Result<bool> { return libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nullptr) == 1; }},
    {"bpf_sock_ops.sk (sockops reads socket storage)", "5.10", [] { return ProbeSockOpsSk(); }},
    {"bpf_sk_storage_get in sockops", "5.10",
     [] {
       return ProbeHelper(BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS, BPF_FUNC_sk_storage_get);
     }},
    {"bpf_get_netns_cookie in cgroup/sock_create (the netns_cookie fallback)", "5.7",
     [] {
       return ProbeHelper(BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE,
                          BPF_FUNC_get_netns_cookie);
     }},
};

}  // namespace

const KernelFeatureInfo& Describe(KernelFeature f) {
  static const KernelFeatureInfo kSetRetval{
      "set_retval", "5.18",
      "a refused connect (empty cluster, REGISTRY_ONLY, no proxy) fails with EPERM "
      "instead of ECONNREFUSED"};
  static const KernelFeatureInfo kNetnsCookie{
      "netns_cookie", "5.14",
      "a pod's netns cookie is read by a BPF program (cgroup/sock_create) in a private "
      "cgroup instead of getsockopt(SO_NETNS_COOKIE)"};
  switch (f) {
    case KernelFeature::kSetRetval:
      return kSetRetval;
    case KernelFeature::kNetnsCookie:
      break;
  }
  return kNetnsCookie;
}

bool KernelFeatures::Has(KernelFeature f) const {
  switch (f) {
    case KernelFeature::kSetRetval:
      return set_retval;
    case KernelFeature::kNetnsCookie:
      return netns_cookie;
  }
  return false;
}

std::string KernelFeatures::Summary() const {
  std::string out = "kernel " + kernel_release + ":";
  for (KernelFeature f : kKernelFeatures) {
    out += " ";
    out += Describe(f).name;
    out += Has(f) ? "=on" : (forced.contains(f) ? "=off(forced)" : "=off");
  }
  return out;
}

Result<std::set<KernelFeature>> ParseKernelFallbacks(std::string_view list) {
  std::set<KernelFeature> out;
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view name = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    if (name.empty())
      continue;
    if (name == "all") {
      out.insert(std::begin(kKernelFeatures), std::end(kKernelFeatures));
      continue;
    }
    bool known = false;
    for (KernelFeature f : kKernelFeatures) {
      if (Describe(f).name == name) {
        out.insert(f);
        known = true;
      }
    }
    if (!known) {
      std::string names;
      for (KernelFeature f : kKernelFeatures)
        names += std::string(Describe(f).name) + ", ";
      return Fail("unknown kernel feature '" + std::string(name) + "' (known: " + names + "all)",
                  EINVAL);
    }
  }
  return out;
}

Result<KernelFeatures> ProbeKernelFeatures(const std::set<KernelFeature>& forced_off) {
  KernelFeatures out;
  utsname u{};
  if (uname(&u) == 0)
    out.kernel_release = u.release;
  for (const Required& req : kRequired) {
    auto has = req.probe();
    SLUICE_RETURN_IF_ERROR(has);
    if (!*has)
      return Fail("kernel " + out.kernel_release + " lacks " + std::string(req.name) +
                      ": Sluice needs Linux " + std::string(req.min_kernel) +
                      " or later for it (see docs/kernel-dataplane.md)",
                  ENOTSUP);
  }
  out.forced = forced_off;
  if (!forced_off.contains(KernelFeature::kSetRetval)) {
    auto has =
        ProbeHelper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT, BPF_FUNC_set_retval);
    SLUICE_RETURN_IF_ERROR(has);
    out.set_retval = *has;
  }
  if (!forced_off.contains(KernelFeature::kNetnsCookie))
    out.netns_cookie = HasSockoptNetnsCookie();
  return out;
}

}  // namespace sluice
