"""Bibliography entries labelled by author and year ("Goyal et al. 2017"), not pybtex's alpha
keys ("GDollarG+17"): a pybtex label style and a formatting style using it, registered for
sphinxcontrib-bibtex (``bibtex_default_style: author_year`` in _config.yml)."""

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as Plain
from pybtex.style.labels import BaseLabelStyle


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = ["".join(p.last_names) or "".join(p.first_names) for p in people]
            who = names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2 else f"{names[0]} et al."
            yield f"{who or entry.key} {entry.fields.get('year', '')}".strip().replace("{", "").replace("}", "")


class AuthorYearStyle(Plain):
    default_label_style = AuthorYearLabels


def setup(app):
    register_plugin("pybtex.style.labels", "author_year_labels", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "author_year", AuthorYearStyle)
    return {"parallel_read_safe": True}
