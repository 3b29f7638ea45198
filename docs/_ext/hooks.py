"""MkDocs hook: publish the repository's committed figures with the site.

The pages cite figures by repository-root paths (`/figures/flow/knockout.png`, `/figures/README.md`),
which GitHub resolves when it shows a page of docs/. mkdocs.yml reads such absolute links as
relative to the site (`validation.links.absolute_links: relative_to_docs`) and checks them; this
hook adds `figures/**/*.png` and `figures/README.md` (how each figure was made) to the site's
files, so those links resolve in the built site too, and a figure that is not committed fails the
strict build instead of leaving a broken image.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).parent
    figures = root / "figures"
    for path in [figures / "README.md", *sorted(figures.rglob("*.png"))]:
        src_uri = path.relative_to(root).as_posix()
        files.append(File(src_uri, str(root), config.site_dir, config.use_directory_urls))
    return files
