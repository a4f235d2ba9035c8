"""The README and docs/ stay true: links resolve, named modules, console scripts, files and job
configs exist, and the README's command-line tools start.

    .venv/bin/python -m pytest -q tests/test_docs.py        (about 30 s; -v lists each command)

The `--help` runs import JAX in fresh interpreters, so they run a few at a time in one fixture
and each command is reported as its own test.
"""

from __future__ import annotations

import concurrent.futures
import configparser
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
DOCS = sorted((ROOT / 'docs').glob('*.md'))
PAGES = [README, *DOCS]
BIN = Path(sys.executable).parent  # the venv's scripts live beside its python

_FENCE = re.compile(r'^(```|~~~)')


def _text(path: Path) -> str:
  return path.read_text(encoding='utf-8')


def _prose(text: str) -> str:
  """`text` without its fenced code blocks."""
  out, fenced = [], False
  for line in text.splitlines():
    if _FENCE.match(line.strip()):
      fenced = not fenced
      continue
    if not fenced:
      out.append(line)
  return '\n'.join(out)


def _rel(path: Path) -> str:
  return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------------------- links

_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r'[`*]', '', heading.strip().lower())
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


def _anchors(path: Path) -> set[str]:
  anchors: dict[str, int] = {}
  out = set()
  for line in _prose(_text(path)).splitlines():
    m = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
    if m:
      slug = _slug(m.group(1))
      n = anchors.get(slug, 0)
      anchors[slug] = n + 1
      out.add(slug if n == 0 else f'{slug}-{n}')
  return out


def _links():
  for page in PAGES:
    for target in _LINK.findall(_prose(_text(page))):
      if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
        continue
      yield page, target


def test_fences_are_balanced():
  for page in PAGES:
    fences = [l for l in _text(page).splitlines() if _FENCE.match(l.strip())]
    assert len(fences) % 2 == 0, f'{_rel(page)}: an unclosed code block'


def test_relative_links_resolve():
  checked, broken = 0, []
  for page, target in _links():
    file, _, anchor = target.partition('#')
    dest = (page.parent / file).resolve() if file else page
    checked += 1
    if not dest.exists():
      broken.append(f'{_rel(page)}: {target} (no such file)')
    elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest):
      broken.append(f'{_rel(page)}: {target} (no heading #{anchor} in {_rel(dest)})')
  assert checked > 20
  assert not broken, '\n'.join(broken)


def test_every_docs_page_is_linked_from_the_readme():
  linked = {(README.parent / t.partition('#')[0]).resolve() for p, t in _links() if p == README}
  assert not [_rel(d) for d in DOCS if d.resolve() not in linked]


# ------------------------------------------------------------------- modules, scripts, files

_MODULE = re.compile(r'python3? -m ([A-Za-z_][\w.]*)')
_NAMED_MODULE = re.compile(r'\bvidlada_jax\.(?:launch|convert)\.[a-z_]\w*')
_SCRIPT = re.compile(r'(?<![\w/.~-])(vidlada-[a-z0-9-]+)(?![\w.-])')
_PATH = re.compile(r'`((?:vidlada_jax|tests|assets|requirements|docs)/[^`\s]*)`')
_CONFIG = re.compile(r'(?<![\w/])(configs/\w+\.py(?::[^\s`\'"\\|)]*)?)')


def _console_scripts() -> set[str]:
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  lines = cfg['options.entry_points']['console_scripts'].strip().splitlines()
  return {line.split('=')[0].strip() for line in lines if line.strip()}


def _distribution_name() -> str:
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  return cfg['metadata']['name']


def _modules(pages) -> list[str]:
  found = []
  for page in pages:
    text = _text(page)
    found += _MODULE.findall(text) + _NAMED_MODULE.findall(text)
  return sorted(set(m.rstrip('.') for m in found))


def test_named_modules_exist():
  modules = _modules(PAGES)
  assert 'vidlada_jax.launch.demo' in modules
  missing = []
  for module in modules:
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
      found = False
    if not found:
      missing.append(module)
  assert not missing, f'modules named in README.md / docs/ that do not exist: {missing}'


def test_named_console_scripts_are_declared():
  declared = _console_scripts()
  named = set()
  for page in PAGES:
    named |= set(_SCRIPT.findall(_text(page)))
  named.discard(_distribution_name())  # "vidlada-jax", the project itself
  assert named, 'no console script named'
  assert not named - declared, f'named but not in setup.cfg: {sorted(named - declared)}'


def test_named_repository_paths_exist():
  missing = []
  for page in PAGES:
    for path in _PATH.findall(_text(page)):
      if re.search(r'[<>*]|\.\.\.|[A-Z]{3,}', path):  # placeholders: NAME, <dir>, *.py
        continue
      if not (ROOT / path.rstrip('/')).exists():
        missing.append(f'{_rel(page)}: {path}')
  assert not missing, '\n'.join(missing)


# Knobs the demo config had at commit 09a630b, named in docs/demo-model.md's history section.
_HISTORICAL_CONFIGS = {'configs/demo.py:first_steps=100', 'configs/demo.py:stage_steps=N'}


def test_named_job_configs_resolve_and_load():
  """Every `configs/NAME.py[:ARGS]` resolves (a local file, else the bundled one) and its
  `get_config(ARGS)` accepts the arguments as written."""
  from vidlada_jax import configs
  specs = set()
  for page in PAGES:
    specs |= set(_CONFIG.findall(_text(page)))
  assert 'configs/tiny.py' in specs
  bad = []
  for spec in sorted(specs - _HISTORICAL_CONFIGS):
    if re.match(r'configs/[A-Z]', spec):
      continue  # configs/NAME.py: the pattern itself
    path, _, arg = configs.resolve(spec).partition(':')
    if not Path(path).is_file():
      bad.append(f'{spec}: no such config')
      continue
    if '...' in arg or '<' in arg:
      continue  # a placeholder: only the file is checked
    loader = importlib.util.spec_from_file_location('_doc_config', path)
    module = importlib.util.module_from_spec(loader)
    try:
      loader.loader.exec_module(module)
      module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # noqa: BLE001 -- report every config that fails
      bad.append(f'{spec}: {type(e).__name__}: {e}')
  assert not bad, '\n'.join(bad)


# ------------------------------------------------------------------- the README's commands

# absl tools print their help and exit 1 by absl's convention (`--help`, `--helpshort` alike),
# so they are run as the README writes them with `--only_check_args` (flags parsed, exit 0,
# nothing run or written); their `--helpshort` is checked separately below.
_ABSL_ARGS = {
    'vidlada_jax.launch.train': ['--config', 'configs/tiny.py', '--workdir', 'runs/tiny'],
    'vidlada_jax.launch.memory_plan': ['--config', 'configs/stage2.py', '--mesh', 'fsdp=64'],
}


def _readme_commands() -> list[tuple[str, list[str]]]:
  """(id, argv) for every `python -m vidlada_jax...` module the README names, each with its
  quick help. (Console scripts are checked without a run: `test_console_scripts_installed`.)"""
  commands = []
  for module in _modules([README]):
    if not module.startswith('vidlada_jax'):
      continue
    if module in _ABSL_ARGS:
      args = _ABSL_ARGS[module] + ['--only_check_args']
    else:
      args = ['--help']
    commands.append((f'python -m {module}', [sys.executable, '-m', module, *args]))
  for module in sorted(_ABSL_ARGS):
    commands.append((f'python -m {module} --helpshort',
                     [sys.executable, '-m', module, '--helpshort']))
  return commands


def _entry_points() -> dict[str, str]:
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  lines = cfg['options.entry_points']['console_scripts'].strip().splitlines()
  return {k.strip(): v.strip() for k, v in (line.split('=') for line in lines if line.strip())}


def test_console_scripts_installed():
  """Each console script the README names is installed in this environment, points at its
  setup.cfg target, and that target function exists (read from the source, not imported: the
  targets run the same code as the `python -m` commands started below)."""
  import ast
  named = set(_SCRIPT.findall(_text(README))) - {_distribution_name()}
  assert len(named) >= 8, named
  problems = []
  for script in sorted(named):
    module, _, function = _entry_points()[script].partition(':')
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding='utf-8'))
    if function not in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}:
      problems.append(f'{script}: {module} defines no {function}()')
    installed = BIN / script
    if not installed.exists():
      problems.append(f'{script}: not installed in {BIN} (pip install -e . installs it)')
    elif f'from {module} import {function}' not in installed.read_text(errors='replace'):
      problems.append(f'{script}: the installed script does not call {module}:{function}; '
                      're-run pip install -e .')
  assert not problems, '\n'.join(problems)


COMMANDS = _readme_commands()


@pytest.fixture(scope='module')
def command_results(tmp_path_factory):
  """Runs every README command, a few at a time, from the repository root (which has no
  configs/ folder: the bundled configs must resolve), and checks nothing is written there."""
  cwd = ROOT
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONWARNINGS': 'ignore'}

  def run(item):
    name, argv = item
    if not Path(argv[0]).exists():
      return name, (None, f'{argv[0]} is not installed (pip install -e . declares it)', 0.0)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return name, (proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start)

  before = set(os.listdir(cwd))
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as ex:
    results = dict(ex.map(run, COMMANDS))
  created = set(os.listdir(cwd)) - before
  print('\nREADME commands run:')
  for name, (rc, _, seconds) in results.items():
    print(f'  rc={rc}  {seconds:5.1f}s  {name}')
  return results, created


def test_readme_commands_are_listed():
  names = [name for name, _ in COMMANDS]
  assert len(names) >= 18, names
  for expected in ('python -m vidlada_jax.launch.demo', 'python -m vidlada_jax.launch.sample',
                   'python -m vidlada_jax.convert.hf_to_jax', 'python -m vidlada_jax.lmms'):
    assert expected in names


@pytest.mark.parametrize('name', [name for name, _ in COMMANDS])
def test_readme_command_starts(command_results, name):
  results, created = command_results
  rc, output, _ = results[name]
  assert rc is not None, output
  if name.endswith('--helpshort'):  # absl: usage on stdout, then exit status 1
    assert rc == 1 and 'Try --helpfull' in output and 'Traceback' not in output, output[-3000:]
  else:
    assert rc == 0, output[-3000:]
    assert 'Traceback' not in output, output[-3000:]
  assert not created, f'the README commands created {sorted(created)} in the repository root'
