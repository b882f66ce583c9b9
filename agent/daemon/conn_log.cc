#include "conn_log.h"

#include <bpf/libbpf.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include "sluice/loader/encoding.h"

namespace sluice::agent {

namespace {

std::string Now() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", buf, static_cast<int>(ms.count()));
}

}  // namespace

int ConnLog::OnEvent(void* ctx, void* data, size_t size) {
  auto* self = static_cast<ConnLog*>(ctx);
  if (size < sizeof(sluice_conn_event))
    return 0;
  sluice_conn_event ev;
  std::memcpy(&ev, data, sizeof(ev));
  std::string pod = self->lookups_.pod ? self->lookups_.pod(ev.netns_cookie) : "";
  const SocketAddress dialled{FromKernel(ev.frontend.ip, ev.frontend.family), ev.frontend.port};
  std::string svc = self->lookups_.service ? self->lookups_.service(dialled) : "";
  std::string line =
      fmt::format("[{}] \"TCP\" kernel src={} dst={} service={} upstream={}\n", Now(),
                  pod.empty() ? fmt::format("netns:{}", ev.netns_cookie) : pod, dialled.ToString(),
                  svc.empty() ? "-" : svc, FromKernel(ev.backend).ToString());
  if (write(self->out_fd_, line.data(), line.size()) > 0)
    self->lines_.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

Result<std::unique_ptr<ConnLog>> ConnLog::Start(Dataplane& dp, const std::string& path,
                                                Lookups lookups) {
  std::unique_ptr<ConnLog> log(new ConnLog());
  log->lookups_ = std::move(lookups);
  if (path.empty() || path == "-") {
    log->out_fd_ = dup(STDOUT_FILENO);
  } else {
    log->out_fd_ = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log->out_fd_ < 0)
      return FailErrno("access log " + path, errno);
  }
  if (dp.ConnLogFd() < 0)
    return Fail("the kernel data plane has no connection log map (sluice_connlog)");
  log->rb_ = ring_buffer__new(dp.ConnLogFd(), &ConnLog::OnEvent, log.get(), nullptr);
  if (!log->rb_)
    return FailErrno("ring buffer on sluice_connlog", errno);
  SLUICE_RETURN_IF_ERROR(dp.SetConnLog(true));
  ConnLog* self = log.get();
  log->thread_ = std::thread([self] {
    while (!self->stop_) {
      int n = ring_buffer__poll(self->rb_, 200);
      if (n < 0 && n != -EINTR) {
        spdlog::error("kernel connection log: {}", strerror(-n));
        return;
      }
    }
  });
  return log;
}

ConnLog::~ConnLog() {
  stop_ = true;
  if (thread_.joinable())
    thread_.join();
  if (rb_)
    ring_buffer__free(rb_);
  if (out_fd_ >= 0)
    close(out_fd_);
}

}  // namespace sluice::agent
