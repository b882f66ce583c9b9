#include "httpbin.h"

#include <charconv>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

namespace sluice::apps {
namespace {

using nlohmann::json;

constexpr std::string_view kJson = "application/json";
constexpr std::string_view kHtml = "text/html; charset=utf-8";

Response Make(int status, std::string_view content_type, std::string body) {
  Response r;
  r.status = status;
  r.headers.emplace_back("Content-Type", std::string(content_type));
  // httpbin answers every request with permissive CORS headers.
  r.headers.emplace_back("Access-Control-Allow-Origin", "*");
  r.headers.emplace_back("Access-Control-Allow-Credentials", "true");
  r.body = std::move(body);
  return r;
}

Response JsonResponse(const json& j) {
  // Bodies may hold arbitrary bytes (/anything echoes them): never throw on bad UTF-8.
  return Make(200, kJson, j.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

Response HtmlError(int status) {
  std::string reason(ReasonPhrase(status));
  return Make(status, kHtml,
              "<!DOCTYPE html>\n<title>" + std::to_string(status) + " " + reason +
                  "</title>\n<h1>" + reason + "</h1>\n");
}

Response MethodNotAllowed(std::string_view allow) {
  Response r = HtmlError(405);
  r.headers.emplace_back("Allow", std::string(allow));
  return r;
}

class Httpbin {
 public:
  explicit Httpbin(HttpbinOptions options) : options_(options) {}

  Response Handle(const Request& req, const ConnectionInfo& conn) const {
    const std::string& p = req.path;
    bool get = req.method == "GET" || req.method == "HEAD";
    if (options_.redirect_to_https && !conn.tls)
      return RedirectToHttps(req);
    if (p == "/anything" || p.starts_with("/anything/"))
      return JsonResponse(Echo(req, conn, /*with_method=*/true, /*with_body=*/true));
    if (p == "/post" || p == "/put" || p == "/patch" || p == "/delete") {
      std::string want = p.substr(1);
      for (char& c : want)
        c = static_cast<char>(c - 'a' + 'A');
      if (req.method != want)
        return MethodNotAllowed(want);
      return JsonResponse(Echo(req, conn, false, true));
    }
    if (p.starts_with("/status/"))
      return Status(std::string_view(p).substr(8));

    if (p == "/get" || p == "/headers" || p == "/ip" || p == "/user-agent" ||
        p.starts_with("/delay/") || p == "/" || p == "/html") {
      if (!get)
        return MethodNotAllowed("GET, HEAD");
    }
    if (p == "/get") {
      json j = Echo(req, conn, options_.style == HttpbinOptions::Style::kGoHttpbin, false);
      return JsonResponse(j);
    }
    if (p == "/headers")
      return JsonResponse(json{{"headers", Headers(req)}});
    if (p == "/ip")
      return JsonResponse(json{{"origin", Origin(req, conn)}});
    if (p == "/user-agent")
      return JsonResponse(json{{"user-agent", std::string(req.Header("user-agent").value_or(""))}});
    if (p.starts_with("/delay/"))
      return Delay(req, conn, std::string_view(p).substr(7));
    if (p == "/")
      return Make(200, kHtml, IndexPage());
    if (p == "/html")
      return Make(200, kHtml,
                  "<!DOCTYPE html>\n<html>\n<body>\n<h1>Herman Melville - Moby-Dick</h1>\n"
                  "<p>Call me Ishmael.</p>\n</body>\n</html>\n");
    if (options_.catch_all_page && get)
      return Make(200, kHtml, CatchAllPage(req));
    return HtmlError(404);
  }

 private:
  bool Go() const { return options_.style == HttpbinOptions::Style::kGoHttpbin; }

  // Repeated names: httpbin joins header values with "," and lists repeated args.
  json Headers(const Request& req) const {
    json out = json::object();
    for (const auto& [k, v] : req.headers) {
      std::string name = CanonicalHeaderName(k);
      if (Go()) {
        out[name].push_back(v);
      } else if (out.contains(name)) {
        out[name] = out[name].get<std::string>() + "," + v;
      } else {
        out[name] = v;
      }
    }
    return out;
  }

  json Pairs(const std::vector<std::pair<std::string, std::string>>& pairs) const {
    json out = json::object();
    for (const auto& [k, v] : pairs) {
      if (Go()) {
        out[k].push_back(v);
      } else if (!out.contains(k)) {
        out[k] = v;
      } else {
        if (!out[k].is_array())
          out[k] = json::array({out[k]});
        out[k].push_back(v);
      }
    }
    return out;
  }

  static std::string Origin(const Request& req, const ConnectionInfo& conn) {
    if (auto xff = req.Header("x-forwarded-for"); xff && !xff->empty())
      return std::string(*xff);
    return conn.peer_ip;
  }

  static std::string Url(const Request& req, const ConnectionInfo& conn) {
    std::string host(req.Header("host").value_or(""));
    if (host.empty())
      host = (conn.peer_ip.find(':') != std::string::npos ? "[::]" : "0.0.0.0") +
             (":" + std::to_string(conn.local_port));
    return (conn.tls ? "https://" : "http://") + host + req.target;
  }

  json Echo(const Request& req, const ConnectionInfo& conn, bool with_method,
            bool with_body) const {
    json j = {{"args", Pairs(ParseQuery(req.query))},
              {"headers", Headers(req)},
              {"origin", Origin(req, conn)},
              {"url", Url(req, conn)}};
    if (with_method)
      j["method"] = req.method;
    if (with_body) {
      std::string_view ct = req.Header("content-type").value_or("");
      j["data"] = "";
      j["files"] = json::object();
      j["form"] = json::object();
      j["json"] = nullptr;
      if (ct.starts_with("application/x-www-form-urlencoded")) {
        j["form"] = Pairs(ParseQuery(req.body));
      } else {
        j["data"] = req.body;
        json parsed = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
        if (!parsed.is_discarded())
          j["json"] = std::move(parsed);
      }
    }
    return j;
  }

  static Response RedirectToHttps(const Request& req) {
    std::string host(req.Header("host").value_or(""));
    // Drop a port, keeping IPv6 literals ("[::1]:80" -> "[::1]") whole.
    if (std::size_t colon = host.rfind(':');
        colon != std::string::npos && host.find(']', colon) == std::string::npos)
      host.resize(colon);
    Response r = Make(301, kHtml, "");
    r.headers.emplace_back("Location", "https://" + host + req.target);
    return r;
  }

  static Response Status(std::string_view spec) {
    std::vector<WeightedStatus> codes = ParseStatusSpec(spec);
    if (codes.empty())
      return Make(400, kHtml, "Invalid status code\n");
    int code = codes.front().code;
    if (codes.size() > 1) {
      thread_local std::mt19937_64 rng{std::random_device{}()};
      std::vector<double> weights;
      for (const auto& c : codes)
        weights.push_back(c.weight);
      std::discrete_distribution<std::size_t> pick(weights.begin(), weights.end());
      code = codes[pick(rng)].code;
    }
    Response r = Make(code, kHtml, "");
    if (code == 418)
      r.body = "I'm a teapot\n";
    if (code == 401)
      r.headers.emplace_back("WWW-Authenticate", "Basic realm=\"Fake Realm\"");
    if (code == 301 || code == 302 || code == 303 || code == 305 || code == 307)
      r.headers.emplace_back("Location", "/redirect/1");
    return r;
  }

  Response Delay(const Request& req, const ConnectionInfo& conn, std::string_view arg) const {
    double seconds = 0;
    auto [ptr, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), seconds);
    if (arg.empty() || ec != std::errc{} || ptr != arg.data() + arg.size() ||
        !std::isfinite(seconds))
      return Make(400, kHtml, "Invalid delay\n");
    seconds = std::clamp(seconds, 0.0, options_.max_delay_seconds);
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    return JsonResponse(Echo(req, conn, false, true));
  }

  static std::string IndexPage() {
    return "<!DOCTYPE html>\n<html>\n<head><title>httpbin (sluice stand-in)</title></head>\n"
           "<body>\n<h1>httpbin (sluice stand-in)</h1>\n<ul>\n"
           "<li>/get</li><li>/headers</li><li>/ip</li><li>/user-agent</li>\n"
           "<li>/status/:code</li><li>/delay/:seconds</li><li>/anything</li>\n"
           "<li>/post /put /patch /delete</li><li>/html</li>\n</ul>\n</body>\n</html>\n";
  }

  static std::string CatchAllPage(const Request& req) {
    std::string host(req.Header("host").value_or("unknown host"));
    // Escape the two characters that could turn echoed text into markup.
    auto escape = [](std::string_view s) {
      std::string out;
      for (char c : s) {
        if (c == '<')
          out += "&lt;";
        else if (c == '>')
          out += "&gt;";
        else if (c == '&')
          out += "&amp;";
        else
          out += c;
      }
      return out;
    };
    return "<!DOCTYPE html>\n<html>\n<head><title>" + escape(host) +
           "</title></head>\n<body>\n<h1>" + escape(host) + "</h1>\n<p>" + escape(req.path) +
           "</p>\n<p>served by sluice-apps external</p>\n</body>\n</html>\n";
  }

  HttpbinOptions options_;
};

}  // namespace

std::vector<WeightedStatus> ParseStatusSpec(std::string_view spec) {
  std::vector<WeightedStatus> out;
  while (true) {
    std::size_t comma = spec.find(',');
    std::string_view part = spec.substr(0, comma);
    std::string_view code_text = part, weight_text;
    if (std::size_t colon = part.find(':'); colon != std::string_view::npos) {
      code_text = part.substr(0, colon);
      weight_text = part.substr(colon + 1);
    }
    int code = 0;
    auto [p, ec] = std::from_chars(code_text.data(), code_text.data() + code_text.size(), code);
    // 1xx are not final answers; httpbin's range otherwise.
    if (code_text.empty() || ec != std::errc{} || p != code_text.data() + code_text.size() ||
        code < 200 || code > 599)
      return {};
    double weight = 1;
    if (!weight_text.empty() || part.find(':') != std::string_view::npos) {
      auto [wp, wec] =
          std::from_chars(weight_text.data(), weight_text.data() + weight_text.size(), weight);
      if (weight_text.empty() || wec != std::errc{} ||
          wp != weight_text.data() + weight_text.size() || !(weight >= 0) || !std::isfinite(weight))
        return {};
    }
    out.push_back({code, weight});
    if (comma == std::string_view::npos)
      break;
    spec.remove_prefix(comma + 1);
  }
  double total = 0;
  for (const auto& w : out)
    total += w.weight;
  if (!(total > 0))
    return {};
  return out;
}

Handler MakeHttpbinHandler(HttpbinOptions options) {
  auto bin = std::make_shared<const Httpbin>(options);
  return [bin](const Request& req, const ConnectionInfo& conn) { return bin->Handle(req, conn); };
}

}  // namespace sluice::apps
