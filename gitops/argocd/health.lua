-- Argo CD health of a gpudock.dev resource (every kind), from the conditions the
-- agent writes (kstatus: Ready, Reconciling, Stalled) and the generation they answer.
-- Argo CD runs it with the resource as `obj` (gopher-lua: Lua 5.1); it returns
-- {status = Healthy | Progressing | Degraded | Suspended, message = ...}.
local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the agent of the node"
  return hs
end
local function condition(kind)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local function said(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end
local generation = obj.metadata.generation
local seen = obj.status.observedGeneration
if generation ~= nil and seen ~= nil and seen < generation then
  hs.status = "Progressing"
  hs.message = "the agent has not seen generation " .. generation .. " yet"
  return hs
end
local phase = obj.status.phase
if obj.kind == "GpuReplicaSet" and (phase == "Stopped" or phase == "Paused") then
  hs.status = "Suspended"
  hs.message = "state " .. phase .. " (the instance holds no GPU)"
  return hs
end
if obj.kind == "GpuMigration" then
  -- One-shot, its phase says it all (written by the source node's agent).
  if phase == "Succeeded" then
    hs.status = "Healthy"
  elseif phase == "Failed" or phase == "Cancelled" then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = "phase " .. (phase or "Pending") .. ": " .. (obj.status.reason or "") ..
    " " .. (obj.status.message or "")
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled)
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = said(reconciling)
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(ready)
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = said(ready)
else
  hs.message = "phase " .. (phase or "unknown")
end
return hs
