"""The modules a UDF can import: the guest's standard library as the sandbox has it.

The guest is CPython 3.14.0 compiled to WebAssembly (componentize-py 0.25.1), not the host's
Python, and it lacks what needs native libraries or an operating system it does not have (``ssl``,
``ctypes``, ``bz2``, ``lzma``, ``mmap``, ``resource``, ``termios``, ``readline``, ``curses``, ``pwd``, …).
This list is every top-level name of the guest's ``sys.stdlib_module_names`` that imported in the guest at
build time (``STDLIB_PROBE`` in ``tests/test_udf_build.py`` rebuilds it and checks the two agree), less the
few that only make sense interactively (``antigravity``, ``this``, ``idlelib``, ``turtle``, ``tkinter``, …).
The build's check refuses any other module before spending a build, naming it and its line.
"""

from __future__ import annotations

__all__ = ["GUEST_PYTHON", "GUEST_STDLIB"]

#: The guest interpreter's version.
GUEST_PYTHON = "3.14.0"

GUEST_STDLIB = frozenset(
    {
        "__future__", "_abc", "_aix_support", "_android_support", "_apple_support", "_ast", "_ast_unparse",
        "_asyncio", "_bisect", "_blake2", "_codecs", "_codecs_cn", "_codecs_hk", "_codecs_iso2022",
        "_codecs_jp", "_codecs_kr", "_codecs_tw", "_collections", "_collections_abc", "_colorize",
        "_compat_pickle", "_contextvars", "_csv", "_datetime", "_decimal", "_elementtree", "_frozen_importlib",
        "_frozen_importlib_external", "_functools", "_heapq", "_hmac", "_imp", "_io", "_ios_support", "_json",
        "_locale", "_lsprof", "_markupbase", "_md5", "_multibytecodec", "_opcode", "_opcode_metadata",
        "_operator", "_osx_support", "_pickle", "_py_abc", "_py_warnings", "_pydatetime", "_pydecimal", "_pyio",
        "_pylong", "_pyrepl", "_queue", "_random", "_sha1", "_sha2", "_sha3", "_signal", "_sitebuiltins",
        "_socket", "_sqlite3", "_sre", "_stat", "_statistics", "_string", "_strptime", "_struct",
        "_suggestions", "_symtable", "_sysconfig", "_thread", "_threading_local", "_tokenize", "_tracemalloc",
        "_types", "_typing", "_warnings", "_weakref", "_weakrefset", "_zoneinfo", "abc", "annotationlib",
        "argparse", "array", "ast", "asyncio", "atexit", "base64", "bdb", "binascii", "bisect", "builtins",
        "cProfile", "calendar", "cmath", "cmd", "code", "codecs", "codeop", "collections", "colorsys",
        "compileall", "compression", "concurrent", "configparser", "contextlib", "contextvars", "copy",
        "copyreg", "csv", "dataclasses", "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email",
        "encodings", "ensurepip", "enum", "errno", "faulthandler", "filecmp", "fileinput", "fnmatch",
        "fractions", "ftplib", "functools", "gc", "genericpath", "getopt", "getpass", "gettext", "glob",
        "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http", "imaplib", "importlib", "inspect", "io",
        "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging", "mailbox", "marshal",
        "math", "mimetypes", "modulefinder", "multiprocessing", "netrc", "ntpath", "nturl2path", "numbers",
        "opcode", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil",
        "platform", "plistlib", "poplib", "posix", "posixpath", "pprint", "profile", "pstats", "py_compile",
        "pyclbr", "pydoc", "pydoc_data", "pyexpat", "queue", "quopri", "random", "re", "reprlib", "rlcompleter",
        "runpy", "sched", "secrets", "select", "selectors", "shelve", "shlex", "shutil", "signal", "site",
        "smtplib", "socket", "socketserver", "sqlite3", "sre_compile", "sre_constants", "sre_parse", "stat",
        "statistics", "string", "stringprep", "struct", "subprocess", "symtable", "sys", "sysconfig",
        "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "token", "tokenize",
        "tomllib", "trace", "traceback", "tracemalloc", "types", "typing", "unicodedata", "unittest", "urllib",
        "uuid", "venv", "warnings", "wave", "weakref", "webbrowser", "wsgiref", "xml", "xmlrpc", "zipapp",
        "zipfile", "zipimport", "zlib", "zoneinfo"
    }
)
