// The httpbin stand-in: the endpoints of kennethreitz/httpbin and mccutchen/go-httpbin
// that Istio's samples and tasks use, answering with the same JSON shapes.
#pragma once

#include <string>
#include <vector>

#include "handler.h"

namespace sluice::apps {

struct HttpbinOptions {
  // kennethreitz/httpbin prints single header and query values as strings;
  // go-httpbin prints every value as a list of strings.
  enum class Style { kHttpbin, kGoHttpbin };
  Style style = Style::kHttpbin;
  // An "external host" answers every unknown GET with 200 and a small HTML page naming
  // the host and path (edition.cnn.com/politics), instead of 404.
  bool catch_all_page = false;
  // Like edition.cnn.com itself: every plain-HTTP request is answered 301 with Location
  // https://HOST/PATH (the port dropped), which is what Istio's egress task shows.
  bool redirect_to_https = false;
  double max_delay_seconds = 10;
};

// One status code picked from httpbin's "/status/" syntax: "418", "500,503" (uniform)
// or "200:3,500:1" (weighted). Empty result: the spec is malformed.
struct WeightedStatus {
  int code;
  double weight;
};
std::vector<WeightedStatus> ParseStatusSpec(std::string_view spec);

Handler MakeHttpbinHandler(HttpbinOptions options);

}  // namespace sluice::apps
