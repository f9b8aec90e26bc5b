"""Every relative link in README.md and docs/*.md leads somewhere.

A link's file must exist in the repository, and a link's ``#anchor`` into a
Markdown page must be the GitHub slug of one of that page's headings (or an
HTML ``id``/``name``). Links to http(s), mailto and other schemes are not
followed. Links inside code (fenced blocks, inline spans) are not links.
"""
import glob
import os
import re
import urllib.parse

from conftest import REPO

FENCE = re.compile(r'^\s{0,3}(```|~~~)')
HEADING = re.compile(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
CODE_SPAN = re.compile(r'(`+)(.+?)\1')
INLINE_LINK = re.compile(r'!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)')
REFERENCE = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$')
HTML_ID = re.compile(r'<[^>]+\b(?:id|name)="([^"]+)"')
SCHEME = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*:')


def pages():
    """README.md and docs/*.md, as paths relative to the repository."""
    found = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
    return ['README.md'] + [os.path.relpath(path, REPO) for path in found]


def prose_lines(text, blank_code=True):
    """(line number, line) outside fenced code blocks, inline code blanked out
    unless ``blank_code`` is false."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if fence:
            if opening and opening.group(1) == fence:
                fence = None
            continue
        if opening:
            fence = opening.group(1)
            continue
        yield number, CODE_SPAN.sub(lambda m: ' ' * len(m.group(0)), line) if blank_code else line


def heading_text(raw):
    """A heading's text as GitHub renders it: code kept, links' text, no markup tags."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), raw)
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)
    return re.sub(r'<[^>]+>', '', text)


def slug(text):
    """GitHub's anchor for a heading: lower case, only letters, digits,
    spaces, hyphens and underscores kept, each space a hyphen."""
    text = text.strip().lower()
    text = ''.join(c for c in text if c.isalnum() or c in ' -_')
    return text.replace(' ', '-')


def anchors(text):
    """Every anchor of a page: its headings' slugs (a repeated one gets -1,
    -2, ...) and the ids of HTML elements."""
    found, seen = set(), {}
    for _, line in prose_lines(text, blank_code=False):
        found.update(HTML_ID.findall(line))
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading_text(heading.group(2)))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f'{base}-{count}')
    return found


def links(text):
    """(line number, target) of every link and reference definition."""
    for number, line in prose_lines(text):
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(2)
        reference = REFERENCE.match(line)
        if reference:
            yield number, reference.group(1)


def broken_links(page, repo=REPO):
    """'page:line: target: why' for each relative link of ``page`` that leads nowhere."""
    with open(os.path.join(repo, page), encoding='utf-8') as f:
        text = f.read()
    problems = []
    for number, target in links(text):
        if not target or SCHEME.match(target) or target.startswith('//'):
            continue
        path, _, anchor = target.partition('#')
        path, anchor = urllib.parse.unquote(path), urllib.parse.unquote(anchor)
        here = os.path.join(repo, page)
        where = os.path.normpath(os.path.join(os.path.dirname(here), path)) if path else here
        why = None
        if os.path.relpath(where, repo).startswith(os.pardir):
            why = 'outside the repository'
        elif not os.path.exists(where):
            why = 'no such file'
        elif anchor and (not path or where.endswith('.md')):
            if os.path.isdir(where):
                why = 'an anchor into a folder'
            else:
                with open(where, encoding='utf-8') as f:
                    if anchor not in anchors(f.read()):
                        why = f'no heading with the anchor #{anchor}'
        if why:
            problems.append(f'{page}:{number}: {target}: {why}')
    return problems


def test_slug_is_githubs():
    assert slug(heading_text('Replicas of channel groups (`--model-parallel`)')) == \
        'replicas-of-channel-groups---model-parallel'
    assert slug('numpy 1.26 and numpy 2, side by side, with replicas (e)') == \
        'numpy-126-and-numpy-2-side-by-side-with-replicas-e'
    assert slug("Two hosts: ours, auto and PyTorch's DDP") == 'two-hosts-ours-auto-and-pytorchs-ddp'
    assert slug('What float32 does to "exact"') == 'what-float32-does-to-exact'
    assert slug('snake_case and Ünïcode') == 'snake_case-and-ünïcode'
    assert anchors('# A\n\n## A\n\n```\n# not a heading\n```\n\n### A!\n') == {'a', 'a-1', 'a-2'}


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'other.md').write_text('# Other page\n\n## A `code` part\n')
    (tmp_path / 'README.md').write_text(
        '# Top\n\n'
        '[fine](docs/other.md#a-code-part) [fine too](#top) [web](https://example.com/x)\n'
        '[gone](docs/missing.md) [bad anchor](docs/other.md#nothing)\n'
        '`[in code](docs/missing.md)` [here, missing](#nowhere)\n'
        '[out](../elsewhere.md)\n\n'
        '```\n[in a block](docs/missing.md)\n```\n\n'
        '[ref]: docs/other.md#other-page\n'
        '[ref2]: docs/absent.md\n')
    assert broken_links('README.md', repo=str(tmp_path)) == [
        'README.md:4: docs/missing.md: no such file',
        'README.md:4: docs/other.md#nothing: no heading with the anchor #nothing',
        'README.md:5: #nowhere: no heading with the anchor #nowhere',
        'README.md:6: ../elsewhere.md: outside the repository',
        'README.md:13: docs/absent.md: no such file',
    ]


def test_every_relative_link_leads_somewhere():
    checked = [page for page in pages() if os.path.exists(os.path.join(REPO, page))]
    assert 'README.md' in checked and len(checked) > 1
    problems = [problem for page in checked for problem in broken_links(page)]
    assert not problems, ('broken links in README.md and docs/ (page:line: target: why):\n'
                          + '\n'.join(problems))
