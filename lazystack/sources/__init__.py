"""Format back ends.

One private module per format. Each turns a source into a *chunk reader*: an
object with ``shape``, ``dtype`` and ``__getitem__`` over the source's own
axes that reads only the region asked for, pickles as a recipe (no open
handle, no data) and reopens lazily in the process that unpickles it. A
source module knows its format and nothing about canonical axes.
"""
