// Runs tests/kube/apiserver_standin.py for a C++ test: a private directory (TLS
// certificate for 127.0.0.1 made with openssl, the tokens file), the process on a
// loopback port, and its /_standin/ controls. Stopped and removed by the destructor.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/kube/client.h"

namespace sluice::kube::testing {

inline constexpr const char* kAdminToken = "standin-admin-token";

class StandinProcess {
 public:
  struct Options {
    bool tls = true;
    double bookmark_interval = 1.0;
  };
  StandinProcess() : StandinProcess(Options{}) {}
  explicit StandinProcess(Options o) : opts_(o) {
    char tmpl[] = "/tmp/sluice-kube-test-XXXXXX";
    if (mkdtemp(tmpl) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    WriteFile(dir_ + "/tokens", std::string(kAdminToken) + " admin\n");
    if (o.tls) {
      const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -keyout " + dir_ +
                              "/key.pem -out " + dir_ +
                              "/cert.pem -days 1 -subj /CN=sluice-apiserver-standin "
                              "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1";
      if (std::system(cmd.c_str()) != 0)
        throw std::runtime_error("openssl could not make the stand-in's certificate");
    }
    Start(0);
  }
  ~StandinProcess() {
    Kill();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  StandinProcess(const StandinProcess&) = delete;
  StandinProcess& operator=(const StandinProcess&) = delete;

  // Starts the process (port 0: any free port; else that port, for a restart).
  void Start(int port) {
    std::filesystem::remove(dir_ + "/port");
    std::vector<std::string> args = {SLUICE_PYTHON3,
                                     SLUICE_KUBE_STANDIN,
                                     "--port",
                                     std::to_string(port),
                                     "--port-file",
                                     dir_ + "/port",
                                     "--tokens-file",
                                     dir_ + "/tokens",
                                     "--bookmark-interval",
                                     std::to_string(opts_.bookmark_interval)};
    if (opts_.tls) {
      args.insert(args.end(), {"--tls-cert", dir_ + "/cert.pem", "--tls-key", dir_ + "/key.pem"});
    }
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      const std::string log = dir_ + "/standin.log";
      FILE* f = std::freopen(log.c_str(), "a", stderr);
      (void)f;
      FILE* n = std::freopen("/dev/null", "w", stdout);
      (void)n;
      execv(argv[0], argv.data());
      _exit(127);
    }
    for (int i = 0; i < 200; ++i) {
      std::ifstream in(dir_ + "/port");
      if (in >> port_)
        return;
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("the stand-in exited: " + ReadFile(dir_ + "/standin.log"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    throw std::runtime_error("the stand-in wrote no port file in 10 s");
  }
  void Kill() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  void Restart() {
    Kill();
    Start(port_);
  }

  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  std::string url() const {
    return std::string(opts_.tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_);
  }
  std::string ca_file() const { return opts_.tls ? dir_ + "/cert.pem" : ""; }

  // A client config with a token file holding `token` (written to DIR/NAME).
  ClientConfig Config(const std::string& token = kAdminToken,
                      const std::string& token_name = "client-token") const {
    ClientConfig c;
    c.server = url();
    c.ca_file = ca_file();
    c.token_file = dir_ + "/" + token_name;
    WriteFile(c.token_file, token + "\n");
    return c;
  }

  // A /_standin/ control (POST; "stats" is a GET).
  nlohmann::json Control(const std::string& what, const nlohmann::json& body = {}) {
    ClientConfig c;
    c.server = url();
    c.ca_file = ca_file();
    Client client(c);
    auto r = what == "stats" ? client.Get("/_standin/stats")
                             : client.Post("/_standin/" + what,
                                           body.is_null() ? nlohmann::json::object() : body);
    if (!r)
      throw std::runtime_error("stand-in control " + what + ": " + r.error().message);
    return *r;
  }

  static void WriteFile(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp);
      out << text;
    }
    std::filesystem::rename(tmp, path);
  }
  static std::string ReadFile(const std::string& path) {
    std::ifstream in(path);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  Options opts_;
  std::string dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// A pod as the tests make them.
inline nlohmann::json MakePod(const std::string& ns, const std::string& name,
                              const std::string& node = "node-1",
                              const nlohmann::json& labels = nlohmann::json::object()) {
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", {{"name", name}, {"namespace", ns}, {"labels", labels}}},
          {"spec",
           {{"nodeName", node},
            {"serviceAccountName", "default"},
            {"containers", nlohmann::json::array({{{"name", "app"}, {"image", "x"}}})}}}};
}

}  // namespace sluice::kube::testing
