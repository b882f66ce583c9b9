#include "sluice/kube/identity.h"

#include <algorithm>

namespace sluice::kube {

Result<std::vector<std::string>> IstioIdentities(Client& api, const std::string& token,
                                                 const std::string& trust_domain,
                                                 const std::vector<std::string>& audiences) {
  if (token.empty())
    return Fail("no bearer token");
  auto review = ReviewToken(api, token, audiences);
  if (!review)
    return Fail("failed to validate the JWT: " + review.error().message);
  if (!review->error.empty())
    return Fail("the service account authentication returns an error: " + review->error);
  if (!review->authenticated)
    return Fail("the token is not authenticated");
  if (std::find(review->groups.begin(), review->groups.end(), "system:serviceaccounts") ==
      review->groups.end())
    return Fail("the token is not a service account");
  // system:serviceaccount:NS:SA
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    size_t colon = review->username.find(':', start);
    parts.push_back(review->username.substr(start, colon - start));
    if (colon == std::string::npos)
      break;
    start = colon + 1;
  }
  if (parts.size() != 4 || parts[2].empty() || parts[3].empty())
    return Fail("invalid username field in the token review result");
  return std::vector<std::string>{"spiffe://" + trust_domain + "/ns/" + parts[2] + "/sa/" +
                                  parts[3]};
}

}  // namespace sluice::kube
