#include "core/data/curation.h"

#include <algorithm>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>
#include <opencv2/img_hash.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/data/caption.h"
#include "core/data/image_io.h"
#include "core/base/sha256.h"

namespace lorad::data {
namespace {

int CountWords(const std::string& s) {
  std::istringstream in(s);
  std::string w;
  int n = 0;
  while (in >> w) ++n;
  return n;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

}  // namespace

std::string ClassifyCaptionStyle(const std::string& caption) {
  const auto tags = CaptionTags(caption, ",");
  const int words = CountWords(caption);
  if (tags.empty() || words < 3) return "short";
  double avg_words = static_cast<double>(words) / static_cast<double>(tags.size());
  const std::string trimmed = PyStrip(caption);
  const bool sentence_end = !trimmed.empty() && (trimmed.back() == '.' || trimmed.back() == '!');
  const bool underscores = caption.find('_') != std::string::npos && caption.find(' ') == std::string::npos;
  if (underscores || (tags.size() >= 3 && avg_words <= 3.0 && !sentence_end)) return "booru";
  if (sentence_end || avg_words > 3.0) return "natural";
  return "short";
}

absl::StatusOr<CurationReport> BuildCurationReport(const DatasetArgs& args, const CurationOptions& options) {
  ASSIGN_OR_RETURN(auto ds, Dataset::Open(args));
  return BuildCurationReport(*ds, options);
}

absl::StatusOr<CurationReport> BuildCurationReport(const Dataset& ds, const CurationOptions& options) {
  CurationReport r;
  r.near_threshold = options.near_threshold;
  const auto& images = ds.images();
  const auto& groups = ds.groups();
  // Subsets and counts.
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    for (size_t si = 0; si < groups[gi].subsets.size(); ++si) {
      const auto& s = groups[gi].subsets[si];
      CurationReport::Subset sub{s.image_dir.string(), s.is_reg, 0, s.num_repeats, 0, s.keep_tokens,
                                 s.caption_extension};
      for (const auto& e : images) {
        if (e.dataset_index == static_cast<int>(gi) && e.subset_index == static_cast<int>(si)) {
          ++sub.images;
          sub.with_repeats += e.num_repeats;
        }
      }
      r.subsets.push_back(sub);
    }
  }
  r.train_with_repeats = ds.num_train_images();
  r.reg_with_repeats = ds.num_reg_images();
  r.buckets = ds.bucket_stats();
  if (options.batch_size > 0) {
    r.batch_size = options.batch_size;
    std::map<std::tuple<int, int, int>, int64_t> counts;
    for (const auto& e : images) counts[{e.dataset_index, e.bucket_width, e.bucket_height}] += e.num_repeats;
    for (const auto& [k, n] : counts) r.steps_per_epoch += (n + options.batch_size - 1) / options.batch_size;
  } else {
    r.batch_size = groups.empty() ? 1 : groups[0].batch_size;
    r.steps_per_epoch = ds.num_batches_per_epoch();
  }
  r.unreadable_files = ds.skipped();

  // Decode every image once: content hash (exact) and pHash (near duplicates).
  struct Hashed {
    std::string path;
    std::string sha;
    cv::Mat phash;
  };
  std::vector<Hashed> hashed;
  auto phash = cv::img_hash::PHash::create();
  for (const auto& e : images) {
    const std::string path = e.path.string();
    auto bytes = ReadFileBytes(e.path);
    absl::StatusOr<cv::Mat> img = bytes.ok() ? DecodeImageRgb(*bytes, path) : absl::StatusOr<cv::Mat>(bytes.status());
    if (!img.ok()) {
      r.unreadable_files.push_back(absl::StrCat(path, ": ", img.status().message()));
      continue;
    }
    ++r.images;
    Hashed h{path, Sha256Hex(*bytes), cv::Mat()};
    phash->compute(*img, h.phash);
    hashed.push_back(std::move(h));
    const int short_side = std::min(e.width, e.height);
    if (short_side < 512) r.below_512.push_back({path, e.width, e.height});
    if (short_side < 1024) r.below_1024.push_back({path, e.width, e.height});
  }
  std::map<std::string, std::vector<std::string>> by_sha;
  for (const auto& h : hashed) by_sha[h.sha].push_back(h.path);
  for (auto& [sha, paths] : by_sha) {
    if (paths.size() > 1) r.exact_duplicates.push_back(paths);
  }
  for (size_t i = 0; i < hashed.size(); ++i) {
    for (size_t j = i + 1; j < hashed.size(); ++j) {
      if (hashed[i].sha == hashed[j].sha) continue;  // already an exact duplicate
      const int d = static_cast<int>(cv::norm(hashed[i].phash, hashed[j].phash, cv::NORM_HAMMING));
      if (d <= options.near_threshold) r.near_duplicates.push_back({hashed[i].path, hashed[j].path, d});
    }
  }

  // Captions: problems, style, tags, keep_tokens preview.
  std::map<std::string, int64_t> tags;
  std::map<std::pair<std::string, int>, int64_t> heads;
  for (const auto& e : images) {
    const std::string path = e.path.string();
    if (e.caption_problem == "missing") r.missing_captions.push_back(path);
    else if (e.caption_problem == "empty") r.empty_captions.push_back(path);
    else if (!e.caption_problem.empty()) r.unreadable_captions.push_back(absl::StrCat(path, ": ", e.caption_problem));
    if (!e.caption_from_file) continue;
    const std::string style = ClassifyCaptionStyle(e.caption);
    r.caption_styles.push_back({path, style});
    r.booru_captions += style == "booru";
    r.natural_captions += style == "natural";
    const std::vector<std::string> caption_tags = CaptionTags(e.caption, ",");
    for (const auto& t : caption_tags) ++tags[Lower(t)];
    ++r.captions_from_files;
    for (size_t i = 0; i < caption_tags.size() && i < CurationReport::kCaptionHeadPositions; ++i) {
      ++heads[{Lower(caption_tags[i]), static_cast<int>(i) + 1}];
    }
    const auto& s = groups[e.dataset_index].subsets[e.subset_index];
    if (static_cast<int>(r.keep_tokens_preview.size()) < options.keep_tokens_samples &&
        (s.keep_tokens > 0 || !s.keep_tokens_separator.empty())) {
      CurationReport::KeepTokensPreview p{path, s.keep_tokens, "", ""};
      const std::string& sep = s.keep_tokens_separator;
      if (!sep.empty() && e.caption.find(sep) != std::string::npos) {
        p.kept = PyStrip(e.caption.substr(0, e.caption.find(sep)));
        p.rest = PyStrip(e.caption.substr(e.caption.find(sep) + sep.size()));
      } else {
        auto toks = PySplit(PyStrip(e.caption), s.caption_separator);
        std::vector<std::string> kept, rest;
        for (size_t i = 0; i < toks.size(); ++i) (i < static_cast<size_t>(s.keep_tokens) ? kept : rest).push_back(PyStrip(toks[i]));
        p.kept = absl::StrJoin(kept, ", ");
        p.rest = absl::StrJoin(rest, ", ");
      }
      r.keep_tokens_preview.push_back(p);
    }
  }
  std::vector<std::pair<std::string, int64_t>> sorted(tags.begin(), tags.end());
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (static_cast<int>(sorted.size()) > options.top_tags) sorted.resize(std::max(0, options.top_tags));
  r.top_tags = std::move(sorted);
  for (const auto& [key, n] : heads) {
    if (n >= 2) r.caption_heads.push_back({key.first, key.second, n});
  }
  std::stable_sort(r.caption_heads.begin(), r.caption_heads.end(), [](const auto& a, const auto& b) {
    return a.count != b.count ? a.count > b.count : a.position < b.position;
  });
  r.mixed_caption_styles = r.booru_captions > 0 && r.natural_captions > 0;

  // One warning line per problem kind.
  auto& w = r.warnings;
  if (!r.exact_duplicates.empty()) {
    w.push_back(absl::StrCat(r.exact_duplicates.size(), " group(s) of identical files: they waste steps; keep one of each"));
  }
  if (!r.near_duplicates.empty()) {
    w.push_back(absl::StrCat(r.near_duplicates.size(), " near-duplicate pair(s) (pHash distance <= ",
                             options.near_threshold, "): similar images over-weight one look"));
  }
  if (!r.below_512.empty()) w.push_back(absl::StrCat(r.below_512.size(), " image(s) below 512 px on the short side"));
  if (!r.below_1024.empty()) {
    w.push_back(absl::StrCat(r.below_1024.size(), " image(s) below 1024 px on the short side (SDXL wants 1024)"));
  }
  if (!r.missing_captions.empty()) {
    w.push_back(absl::StrCat(r.missing_captions.size(), " image(s) without a caption file (class tokens used)"));
  }
  if (!r.empty_captions.empty()) w.push_back(absl::StrCat(r.empty_captions.size(), " empty caption file(s)"));
  if (!r.unreadable_captions.empty()) {
    w.push_back(absl::StrCat(r.unreadable_captions.size(), " unreadable caption file(s)"));
  }
  if (r.mixed_caption_styles) {
    w.push_back(absl::StrCat("captions mix booru tags (", r.booru_captions, ") and natural language (",
                             r.natural_captions, "): pick one style"));
  }
  if (!r.unreadable_files.empty()) {
    w.push_back(absl::StrCat(r.unreadable_files.size(), " unreadable/corrupt image file(s) skipped"));
  }
  for (const auto& s : ds.warnings()) w.push_back(s);
  return r;
}

std::string CurationReport::ToJson() const {
  using nlohmann::json;
  json j;
  j["subsets"] = json::array();
  for (const auto& s : subsets) {
    j["subsets"].push_back({{"image_dir", s.image_dir}, {"is_reg", s.is_reg}, {"images", s.images},
                            {"num_repeats", s.num_repeats}, {"with_repeats", s.with_repeats},
                            {"keep_tokens", s.keep_tokens}, {"caption_extension", s.caption_extension}});
  }
  j["images"] = images;
  j["train_images_with_repeats"] = train_with_repeats;
  j["reg_images_with_repeats"] = reg_with_repeats;
  j["batch_size"] = batch_size;
  j["steps_per_epoch"] = steps_per_epoch;
  j["exact_duplicates"] = exact_duplicates;
  j["near_threshold"] = near_threshold;
  j["near_duplicates"] = json::array();
  for (const auto& p : near_duplicates) j["near_duplicates"].push_back({{"a", p.a}, {"b", p.b}, {"distance", p.distance}});
  auto sized = [](const std::vector<SizedImage>& v) {
    json a = json::array();
    for (const auto& s : v) a.push_back({{"path", s.path}, {"width", s.width}, {"height", s.height}});
    return a;
  };
  j["below_512"] = sized(below_512);
  j["below_1024"] = sized(below_1024);
  j["buckets"] = json::array();
  for (const auto& b : buckets) j["buckets"].push_back({{"resolution", {b.width, b.height}}, {"count", b.count}});
  j["missing_captions"] = missing_captions;
  j["empty_captions"] = empty_captions;
  j["unreadable_captions"] = unreadable_captions;
  j["caption_styles"] = json::array();
  for (const auto& c : caption_styles) j["caption_styles"].push_back({{"path", c.path}, {"style", c.style}});
  j["booru_captions"] = booru_captions;
  j["natural_captions"] = natural_captions;
  j["mixed_caption_styles"] = mixed_caption_styles;
  j["top_tags"] = json::array();
  for (const auto& [t, n] : top_tags) j["top_tags"].push_back({{"tag", t}, {"count", n}});
  j["captions_from_files"] = captions_from_files;
  j["caption_heads"] = json::array();
  for (const auto& h : caption_heads) {
    j["caption_heads"].push_back({{"tag", h.tag}, {"position", h.position}, {"count", h.count}});
  }
  j["keep_tokens_preview"] = json::array();
  for (const auto& p : keep_tokens_preview) {
    j["keep_tokens_preview"].push_back({{"path", p.path}, {"keep_tokens", p.keep_tokens}, {"kept", p.kept}, {"rest", p.rest}});
  }
  j["unreadable_files"] = unreadable_files;
  j["warnings"] = warnings;
  return j.dump(2);
}

std::string CurationReport::ToText() const {
  std::ostringstream o;
  o << "Dataset curation report\n";
  o << "  images: " << images << " readable; " << train_with_repeats << " training with repeats, "
    << reg_with_repeats << " regularisation with repeats\n";
  for (const auto& s : subsets) {
    o << "  " << (s.is_reg ? "[reg] " : "") << s.image_dir << ": " << s.images << " images x " << s.num_repeats
      << " repeats = " << s.with_repeats << " (keep_tokens " << s.keep_tokens << ", captions *" << s.caption_extension
      << ")\n";
  }
  o << "  steps per epoch at batch size " << batch_size << ": " << steps_per_epoch << "\n";
  o << "Buckets:\n";
  for (const auto& b : buckets) o << "  " << b.width << "x" << b.height << ": " << b.count << "\n";
  o << "Exact duplicates: " << exact_duplicates.size() << "\n";
  for (const auto& g : exact_duplicates) o << "  " << absl::StrJoin(g, " == ") << "\n";
  o << "Near duplicates (pHash distance <= " << near_threshold << "): " << near_duplicates.size() << "\n";
  for (const auto& p : near_duplicates) o << "  " << p.a << " ~ " << p.b << " (distance " << p.distance << ")\n";
  o << "Below 512 px short side: " << below_512.size() << "\n";
  for (const auto& s : below_512) o << "  " << s.path << " (" << s.width << "x" << s.height << ")\n";
  o << "Below 1024 px short side: " << below_1024.size() << "\n";
  o << "Captions: " << missing_captions.size() << " missing, " << empty_captions.size() << " empty, "
    << unreadable_captions.size() << " unreadable\n";
  for (const auto& p : missing_captions) o << "  missing: " << p << "\n";
  for (const auto& p : empty_captions) o << "  empty: " << p << "\n";
  for (const auto& p : unreadable_captions) o << "  unreadable: " << p << "\n";
  o << "Caption styles: " << booru_captions << " booru, " << natural_captions << " natural"
    << (mixed_caption_styles ? "  <-- MIXED" : "") << "\n";
  for (const auto& c : caption_styles) o << "  " << c.style << ": " << c.path << "\n";
  o << "Top tags:\n";
  for (const auto& [t, n] : top_tags) o << "  " << n << "  " << t << "\n";
  if (!keep_tokens_preview.empty()) {
    o << "keep_tokens preview (kept | shuffled):\n";
    for (const auto& p : keep_tokens_preview) o << "  [" << p.kept << "] | " << p.rest << "   (" << p.path << ")\n";
  }
  o << "Unreadable files: " << unreadable_files.size() << "\n";
  for (const auto& u : unreadable_files) o << "  " << u << "\n";
  o << "Warnings: " << warnings.size() << "\n";
  for (const auto& w : warnings) o << "  ! " << w << "\n";
  return o.str();
}

}  // namespace lorad::data
