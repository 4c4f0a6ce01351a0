"""Reading a live CPython from outside: memory, maps, ELF symbols, layouts.

Only this package knows how a CPython process is laid out; everything above
it asks through its public functions:

- ``discovery.locate_interpreter(pid) -> Interpreter`` — where and which CPython
- ``layouts.layout_for(interp, mem) -> Layout`` — the one owner of struct offsets
- ``stacks.StackReader(interp)`` — ``.sample() -> Sample`` (every thread's frames),
  ``.frame_locals(frame)``, ``.thread_names()``, ``.module_global(mod, name)``
- ``objects.ObjectReader`` — decode values (typed ``Failure`` instead of raising)
- ``paths.evaluate(reader, "pkg.mod:obj.attr[key]")`` — bounded object paths
- ``generators.GeneratorReader`` — generator/coroutine state, frame, delegate
- ``tasks.TaskReader(reader)`` — asyncio tasks and their await chains
- ``dump.take_dump(pid, ...)`` — what ``perfd dump`` prints
"""
