"""Runs a document's snippets in order, in one namespace, as a reader would in ``python``.

Started by ``tests/test_docs.py`` as ``python -c <this file's text> <blocks.json>``
in the document's project directory, so ``''`` (that directory) is first on
``sys.path``, as in an interactive session there. Each block may use
top-level ``await`` (run on one event loop shared by all blocks, so pools
opened in one block serve the next); a block without it runs with no loop
running, so ``asyncio.run(...)`` works in it. Tracebacks show the document's
own lines. The first block that raises ends the run with exit status 1.
"""

import ast
import asyncio
import inspect
import json
import linecache
import sys
import traceback
from pathlib import Path


def main() -> int:
    document = json.loads(Path(sys.argv[1]).read_text())
    path = document["path"]
    source_lines = Path(path).read_text().splitlines(keepends=True)
    linecache.cache[path] = (sum(map(len, source_lines)), None, source_lines, path)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    loop = asyncio.new_event_loop()
    for block in document["blocks"]:
        # Padding keeps the document's line numbers in tracebacks.
        source = "\n" * (block["line"] - 1) + block["source"]
        try:
            code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if code.co_flags & inspect.CO_COROUTINE:
                loop.run_until_complete(eval(code, namespace))
            else:
                exec(code, namespace)
        except BaseException:
            print(f"{path}:{block['line']}: the block raised", file=sys.stderr)
            traceback.print_exc()
            return 1
    print(f"{len(document['blocks'])} blocks ran")
    return 0


sys.exit(main())
