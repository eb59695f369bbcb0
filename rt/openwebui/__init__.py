"""open-webui as the source of identities and rights (`[openwebui] url`).

With an unmodified open-webui in front of the appliance nobody registers users, channels
or notes with the appliance: they are open-webui's. This package asks open-webui's own HTTP
API, with each tab's own token (so no key of the appliance's is needed and open-webui's
access rules are applied by open-webui itself), and writes back what the socket layer owes
open-webui: note content, read markers, last-active times, and the Redis pools its backend
reads (`{p}:session_pool`, `{p}:usage_pool`).

Modules: `api` (the HTTP calls), `cache` (bounded TTL cache with coalesced loads),
`identities` (who a token is, revocation), `rights` (channels, notes, chats),
`pools` (open-webui's Redis pools), `writeback` (note content, read markers).
"""
