"""Running one workflow: its tasks in dependency order, exactly once per recorded task.

The scheduler runs in the application process (or the frontend). Each unit is one call to
the engine, which runs it as one transaction; steps run here, between transactions, with
their outputs recorded. Independent branches run concurrently: on the runtime's thread
pool for :meth:`WorkflowRun.run`, as asyncio tasks for :meth:`WorkflowRun.run_async`.

Whatever happens, the answer of a workflow with a status row is what the status row says:
a retry of a finished workflow returns the recorded output or raises the recorded error,
and two concurrent runs of one workflow ID return the same answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from apiary import _bookkeeping, _codec
from apiary._bookkeeping import WorkflowRecord
from apiary._errors import FunctionError
from apiary._execution import StepContext
from apiary._plan import Task, WorkflowPlan
from apiary._units import UnitOutcome, UnitRequest, resolve

if TYPE_CHECKING:
    from apiary._engines._base import Engine


class WorkflowRun:
    """The state of one run of one workflow ID."""

    def __init__(
        self,
        plan: WorkflowPlan,
        engine: Engine,
        callables: Mapping[str, Callable[..., Any]],
        workflow_id: str,
        params: dict[str, Any],
        start: dict[str, Any] | None,
        pool: concurrent.futures.Executor,
        *,
        trace: bool = False,
    ) -> None:
        self.plan = plan
        self.engine = engine
        self.callables = callables
        self.workflow_id = workflow_id
        self.params = params
        self.start = start if plan.status_row else None
        self.pool = pool
        self.trace = trace
        self.outputs: dict[str, Any] = {}
        self.final: WorkflowRecord | None = None
        #: This run created the status row, so nothing was recorded before it.
        self.fresh = False

    # -- shared pieces ---------------------------------------------------------------

    def _request(self, task: Task) -> UnitRequest:
        outputs = self.outputs
        return UnitRequest(
            self.workflow_id,
            self.params,
            {node: outputs[node] for node in task.inputs},
            self.start if task.unit is not None and task.unit.starts else None,
            trace=self.trace,
        )

    def _absorb(self, outcome: UnitOutcome) -> None:
        self.fresh = self.fresh or outcome.created
        if outcome.finished is not None:
            self.final = outcome.finished
        elif outcome.outputs is not None:
            self.outputs.update(outcome.outputs)

    def _step_call(self, task: Task) -> tuple[Callable[..., Any], StepContext, dict[str, Any]]:
        node = task.nodes[0]
        args = {name: resolve(tpl, self.params, self.outputs) for name, tpl in node.args.items()}
        ctx = StepContext(self.workflow_id, f"{self.workflow_id}/{node.id}")
        return self.callables[node.function], ctx, args

    def _step_output(self, task: Task, value: Any) -> str:
        node = task.nodes[0]
        try:
            return _codec.dumps({node.id: _codec.normalize(value)})
        except TypeError as exc:
            raise FunctionError(
                "TypeError",
                f"returned a value that is not JSON: {exc}",
                function=node.function,
                workflow_id=self.workflow_id,
            ) from exc

    def _step_error(self, task: Task, exc: Exception) -> FunctionError:
        return FunctionError(
            type(exc).__name__,
            str(exc),
            function=task.nodes[0].function,
            workflow_id=self.workflow_id,
        )

    def _absorb_step(self, finished: WorkflowRecord | None, output: str | None) -> None:
        if finished is not None:
            self.final = finished
        elif output is not None:
            self.outputs.update(_codec.loads(output))

    def _result(self) -> Any:
        if self.final is not None:
            return self.final.result()
        return resolve(self.plan.output, self.params, self.outputs)

    def _invocation(self, task: Task) -> str:
        return f"{self.workflow_id}/{task.id}"

    # -- synchronous -----------------------------------------------------------------

    def run(self) -> Any:
        """Run the workflow to its end and return its output (or raise its error)."""
        plan = self.plan
        try:
            if plan.status_row and not plan.starts_fused:
                self.fresh, finished = self.engine.system(
                    _bookkeeping.begin_workflow, self.workflow_id, self.start, write=True
                )
                if finished is not None:
                    return finished.result()
            if plan.sequential:
                for task in plan.tasks:
                    self._run_task(task)
                    if self.final is not None:
                        break
            else:
                self._run_concurrently()
            if self.final is None and plan.status_row:
                self.final = self.engine.system(
                    _bookkeeping.end_workflow,
                    self.workflow_id,
                    output=_codec.dumps(self._result()),
                    write=True,
                )
        except FunctionError as exc:
            if not plan.status_row:
                raise
            self.final = self.engine.system(
                _bookkeeping.end_workflow,
                self.workflow_id,
                error=_codec.dumps(exc.to_json()),
                start=self.start,
                write=True,
            )
        return self._result()

    def _run_task(self, task: Task) -> None:
        if task.unit is not None:
            self._absorb(self.engine.run_unit(task.unit, self._request(task)))
            return
        finished: WorkflowRecord | None = None
        output: str | None = None
        if task.recorded and not self.fresh:
            finished, output = self.engine.system(
                _bookkeeping.lookup_output, self.workflow_id, self._invocation(task), write=False
            )
        if finished is None and output is None:
            fn, ctx, args = self._step_call(task)
            try:
                if inspect.iscoroutinefunction(fn):
                    value = asyncio.run(fn(ctx, **args))  # an async step, from sync code
                else:
                    value = fn(ctx, **args)
            except Exception as exc:
                raise self._step_error(task, exc) from exc
            output = self._step_output(task, value)
            if task.recorded and not task.sink_step:
                finished, output = self.engine.system(
                    _bookkeeping.record_once,
                    self.workflow_id,
                    self._invocation(task),
                    output,
                    write=True,
                )
        self._absorb_step(finished, output)

    def _run_concurrently(self) -> None:
        tasks = self.plan.tasks
        waiting = [len(task.deps) for task in tasks]
        dependents: list[list[int]] = [[] for _ in tasks]
        for index, task in enumerate(tasks):
            for dep in task.deps:
                dependents[dep].append(index)
        ready = [i for i, count in enumerate(waiting) if count == 0]
        running: dict[concurrent.futures.Future[None], int] = {}
        error: BaseException | None = None
        while ready or running:
            while ready and error is None and self.final is None:
                index = ready.pop(0)
                running[self.pool.submit(self._run_task, tasks[index])] = index
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
            for future in done:
                index = running.pop(future)
                exc = future.exception()
                if exc is not None:
                    # Keep the first application error; let running branches finish.
                    if error is None or (
                        isinstance(exc, FunctionError) and not isinstance(error, FunctionError)
                    ):
                        error = exc
                    continue
                for child in dependents[index]:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        ready.append(child)
            if error is not None or self.final is not None:
                ready.clear()
        if error is not None:
            raise error

    # -- asynchronous ----------------------------------------------------------------

    async def run_async(self) -> Any:
        """Like :meth:`run`, for an event loop: units run as awaitable engine calls."""
        plan = self.plan
        engine = self.engine
        try:
            if plan.status_row and not plan.starts_fused:
                self.fresh, finished = await engine.system_async(
                    _bookkeeping.begin_workflow, self.workflow_id, self.start, write=True
                )
                if finished is not None:
                    return finished.result()
            if plan.sequential:
                for task in plan.tasks:
                    await self._run_task_async(task)
                    if self.final is not None:
                        break
            else:
                await self._run_concurrently_async()
            if self.final is None and plan.status_row:
                self.final = await engine.system_async(
                    _bookkeeping.end_workflow,
                    self.workflow_id,
                    output=_codec.dumps(self._result()),
                    write=True,
                )
        except FunctionError as exc:
            if not plan.status_row:
                raise
            self.final = await engine.system_async(
                _bookkeeping.end_workflow,
                self.workflow_id,
                error=_codec.dumps(exc.to_json()),
                start=self.start,
                write=True,
            )
        return self._result()

    async def _run_task_async(self, task: Task) -> None:
        if task.unit is not None:
            self._absorb(await self.engine.run_unit_async(task.unit, self._request(task)))
            return
        finished: WorkflowRecord | None = None
        output: str | None = None
        if task.recorded and not self.fresh:
            finished, output = await self.engine.system_async(
                _bookkeeping.lookup_output, self.workflow_id, self._invocation(task), write=False
            )
        if finished is None and output is None:
            fn, ctx, args = self._step_call(task)
            try:
                if asyncio.iscoroutinefunction(fn):
                    value = await fn(ctx, **args)
                else:
                    loop = asyncio.get_running_loop()
                    value = await loop.run_in_executor(self.pool, lambda: fn(ctx, **args))
            except Exception as exc:
                raise self._step_error(task, exc) from exc
            output = self._step_output(task, value)
            if task.recorded and not task.sink_step:
                finished, output = await self.engine.system_async(
                    _bookkeeping.record_once,
                    self.workflow_id,
                    self._invocation(task),
                    output,
                    write=True,
                )
        self._absorb_step(finished, output)

    async def _run_concurrently_async(self) -> None:
        tasks = self.plan.tasks
        started: list[asyncio.Task[None]] = []

        async def run_one(index: int) -> None:
            deps = [started[d] for d in tasks[index].deps]
            if deps:
                await asyncio.gather(*deps)
            if self.final is None:
                await self._run_task_async(tasks[index])

        for index in range(len(tasks)):
            started.append(asyncio.ensure_future(run_one(index)))
        results = await asyncio.gather(*started, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, FunctionError)), errors[0])
