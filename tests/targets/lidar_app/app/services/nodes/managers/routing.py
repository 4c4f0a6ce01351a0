"""The other app layout's router: same entry-function shape as the profile expects."""

import asyncio


class DataRouter:
    def __init__(self, manager):
        self.manager = manager

    async def forward_data(self, source_id, payload):
        targets = self.manager.downstream_map.get(source_id, [])
        if len(targets) == 1:
            await self._send_to_target_node(source_id, targets[0], payload)
        elif targets:
            await asyncio.gather(*(self._send_to_target_node(source_id, t, payload) for t in targets))

    async def _send_to_target_node(self, source_id, target_id, payload):
        target_node = self.manager.nodes.get(target_id)
        if target_node is None:
            return
        await target_node.on_input(payload)
        self.manager.record(target_id, payload)
