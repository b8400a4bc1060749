"""Inputs an attacker sends, shared by the parser's unit tests and the hostile-client tests of the server."""

from __future__ import annotations

__all__ = ["BILLION_LAUGHS"]

#: A YAML pipeline definition of ~1 KB whose aliases expand to 9**9 strings ("billion laughs"); its first alias
#: is on line 7.
BILLION_LAUGHS = """\
name: bomb
version: 1.0.0
type: document
stages: []
parameters:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""
