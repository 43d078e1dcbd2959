// The rls3 bridge Agent: one SceneBackend operation per decision.
// Message format (the single reference): rls3/bridges/messages.py, version "rls3-bridge/1".
using System;
using System.Collections.Generic;
using System.Linq;
using Unity.MLAgents;
using Unity.MLAgents.Actuators;
using Unity.MLAgents.Policies;
using Unity.MLAgents.Sensors;
using Unity.MLAgents.SideChannels;
using UnityEngine;

namespace Rls3.Bridge
{
    /// <summary>
    /// Behaviour "Rls3Arranger": 10 continuous actions (the command), observations = the
    /// Rls3CameraSensor image + a vector echo [seq, op, valid]. Each action is one operation on the
    /// active room: LOAD a room with three random pool objects, MOVE one of the three active objects,
    /// SWAP one with a pool object, RENDER. Feasibility mirrors the embedded simulator: inside the room,
    /// lands on a designated surface (raycasts), no overlap (Physics.OverlapBox +
    /// Physics.ComputePenetration), visible from the camera (viewport + line of sight).
    /// Set up: BehaviorParameters (name Rls3Arranger, vector size 3, 10 continuous actions, type
    /// Default), DecisionRequester (period 1, no actions between decisions), MaxStep 0.
    /// </summary>
    public class Rls3Arranger : Agent
    {
        public const string Format = "rls3-bridge/1";
        const int ActionSize = 10;
        const float Snap = 0.05f;          // drop onto a surface at most this far below the target
        const float SurfaceTol = 0.015f;   // landing height must match a surface top within this
        const float PenetrationTol = 0.004f; // as the embedded simulator (rls3.sim.physics)
        const float ViewportMargin = 0.04f;
        const int PlaceTries = 400;

        [Tooltip("Rooms in scene-index order (their sceneName values are the scene names).")]
        public Rls3Room[] rooms;
        [Tooltip("The object pool in index order.")]
        public Rls3PoolObject[] pool;
        [Tooltip("The camera the sensor renders; moved to each room's camera template on LOAD.")]
        public Camera bridgeCamera;
        public Rls3CameraSensorComponent cameraSensor;

        Rls3MetadataChannel m_Channel;
        int m_Room = -1;
        readonly Rls3PoolObject[] m_Slots = new Rls3PoolObject[3];

        // the answer being prepared for the next decision
        int m_Seq;
        string m_Op = "reset";
        int m_OpCode = -1;
        bool m_Valid = true;
        string m_Reason = "ok", m_Detail = "", m_Error;
        bool m_Rendered;

        public override void Initialize()
        {
            m_Channel = new Rls3MetadataChannel();
            SideChannelManager.RegisterSideChannel(m_Channel);
            // Step the Academy once per frame ourselves: only physics *queries* are used, so the
            // fixed-timestep loop would only slow the exchange down.
            Academy.Instance.AutomaticSteppingEnabled = false;
            Physics.simulationMode = SimulationMode.Script;
            QualitySettings.vSyncCount = 0;
            Application.targetFrameRate = -1;
            foreach (var o in pool) o.gameObject.SetActive(false);
            foreach (var r in rooms) r.gameObject.SetActive(false);
            CheckBehaviour();
        }

        void Update()
        {
            Academy.Instance.EnvironmentStep(); // blocks on the exchange with Python
        }

        // ML-Agents calls Initialize again after a disable/enable cycle: the channel registered
        // there must be gone by then, or registering its id a second time throws.
        protected override void OnDisable()
        {
            UnregisterChannel();
            base.OnDisable();
        }

        void OnDestroy()
        {
            UnregisterChannel();
        }

        void UnregisterChannel()
        {
            if (m_Channel == null) return;
            SideChannelManager.UnregisterSideChannel(m_Channel);
            m_Channel = null;
        }

        public override void OnEpisodeBegin()
        {
            // An ML-Agents reset from Python: nothing changes in the room; answer "reset", seq 0.
            SetAnswer(0, "reset", -1);
        }

        public override void CollectObservations(VectorSensor sensor)
        {
            sensor.AddObservation((float)m_Seq);
            sensor.AddObservation((float)m_OpCode);
            sensor.AddObservation(m_Valid ? 1f : 0f);
            m_Channel?.SendJson(MetadataJson());
        }

        public override void OnActionReceived(ActionBuffers actions)
        {
            var a = actions.ContinuousActions;
            int op = Mathf.RoundToInt(a[0]), seq = Mathf.RoundToInt(a[1]), slot = Mathf.RoundToInt(a[2]);
            int index = Mathf.RoundToInt(a[6]), seedHi = Mathf.RoundToInt(a[7]), seedLo = Mathf.RoundToInt(a[8]);
            bool render = a[9] > 0.5f;
            string[] labels = { "noop", "load", "move", "swap", "render" };
            SetAnswer(seq, op >= 0 && op < labels.Length ? labels[op] : "noop", op);
            try
            {
                switch (op)
                {
                    case 0: break;
                    case 1: Load(index, seedHi < 0 ? (int?)null : (seedHi << 16) | seedLo); break;
                    case 2: Move(CheckSlot(slot), Rls3Frame.FromRls3(a[3], a[4], a[5])); break;
                    case 3: Swap(CheckSlot(slot), index); break;
                    case 4: break;
                    default: throw new ArgumentException($"unknown op {op}");
                }
                if (op == 4 || (render && m_Valid && op >= 1 && op <= 3)) RequestRender();
            }
            catch (Exception e) // reported to Python as "error"; the connection stays usable
            {
                m_Error = $"{e.GetType().Name}: {e.Message}";
                m_Valid = true; m_Reason = "ok"; m_Detail = "";
            }
            if ((op == 2 || op == 3) && m_Error == null) AddReward(m_Valid ? 1f : -1f);
        }

        public override void Heuristic(in ActionBuffers actionsOut)
        {
            var a = actionsOut.ContinuousActions;
            for (int i = 0; i < a.Length; i++) a[i] = 0f; // NOOP
        }

        // -- operations ----------------------------------------------------------------------------
        /// <summary>LOAD is all or nothing: on any failure the previous room, slots, poses and
        /// camera come back before the error is reported, so the next answer's state is the old one.</summary>
        void Load(int index, int? seed)
        {
            if (index < 0 || index >= rooms.Length) throw new ArgumentException($"scene index {index} out of range 0..{rooms.Length - 1}");
            var before = new Snapshot(this);
            try
            {
                LoadRoom(index, seed);
            }
            catch
            {
                before.Restore(this);
                throw;
            }
        }

        void LoadRoom(int index, int? seed)
        {
            var rng = seed.HasValue ? new System.Random(seed.Value) : new System.Random();
            foreach (var o in pool) o.gameObject.SetActive(false);
            for (int i = 0; i < rooms.Length; i++) rooms[i].gameObject.SetActive(i == index);
            m_Room = index;
            var room = rooms[index];
            bridgeCamera.transform.SetPositionAndRotation(room.cameraTemplate.transform.position, room.cameraTemplate.transform.rotation);
            bridgeCamera.fieldOfView = room.cameraTemplate.fieldOfView;
            // images render square into a RenderTexture: the visibility test must use that aspect,
            // not the screen's
            bridgeCamera.aspect = (float)cameraSensor.Sensor.Width / cameraSensor.Sensor.Height;
            Physics.SyncTransforms();
            var order = Enumerable.Range(0, pool.Length).ToArray();
            for (int i = 0; i < 3; i++) // partial Fisher-Yates: three distinct pool objects
            {
                int j = i + rng.Next(order.Length - i);
                (order[i], order[j]) = (order[j], order[i]);
            }
            for (int s = 0; s < 3; s++) m_Slots[s] = null;
            for (int s = 0; s < 3; s++)
            {
                var obj = pool[order[s]];
                m_Slots[s] = obj;
                obj.gameObject.SetActive(true);
                if (!PlaceRandomly(s, obj, room, rng))
                    throw new InvalidOperationException($"scene {room.sceneName}: found no valid spot for {obj.objectName} in {PlaceTries} tries");
            }
        }

        /// <summary>What a failed LOAD puts back: room, slots with their poses and surfaces, camera.</summary>
        sealed class Snapshot
        {
            readonly int m_Room;
            readonly Rls3PoolObject[] m_Slots;
            readonly Vector3[] m_Positions = new Vector3[3];
            readonly Quaternion[] m_Rotations = new Quaternion[3];
            readonly string[] m_Surfaces = new string[3];
            readonly Vector3 m_CameraPosition;
            readonly Quaternion m_CameraRotation;
            readonly float m_Fov, m_Aspect;

            public Snapshot(Rls3Arranger a)
            {
                m_Room = a.m_Room;
                m_Slots = (Rls3PoolObject[])a.m_Slots.Clone();
                for (int s = 0; s < 3; s++)
                {
                    if (m_Slots[s] == null) continue;
                    m_Positions[s] = m_Slots[s].transform.position;
                    m_Rotations[s] = m_Slots[s].transform.rotation;
                    m_Surfaces[s] = m_Slots[s].SurfaceName;
                }
                m_CameraPosition = a.bridgeCamera.transform.position;
                m_CameraRotation = a.bridgeCamera.transform.rotation;
                m_Fov = a.bridgeCamera.fieldOfView;
                m_Aspect = a.bridgeCamera.aspect;
            }

            public void Restore(Rls3Arranger a)
            {
                foreach (var o in a.pool) o.gameObject.SetActive(false);
                for (int i = 0; i < a.rooms.Length; i++) a.rooms[i].gameObject.SetActive(i == m_Room);
                a.m_Room = m_Room;
                for (int s = 0; s < 3; s++)
                {
                    a.m_Slots[s] = m_Slots[s];
                    if (m_Slots[s] == null) continue;
                    m_Slots[s].gameObject.SetActive(true);
                    m_Slots[s].transform.SetPositionAndRotation(m_Positions[s], m_Rotations[s]);
                    m_Slots[s].SurfaceName = m_Surfaces[s];
                }
                a.bridgeCamera.transform.SetPositionAndRotation(m_CameraPosition, m_CameraRotation);
                a.bridgeCamera.fieldOfView = m_Fov;
                a.bridgeCamera.aspect = m_Aspect;
                Physics.SyncTransforms();
            }
        }

        void Move(int slot, Vector3 d)
        {
            var obj = m_Slots[slot];
            TryPlace(slot, obj, obj.Base + d, obj.transform.eulerAngles.y);
        }

        void Swap(int slot, int poolIndex)
        {
            if (poolIndex < 0 || poolIndex >= pool.Length) throw new ArgumentException($"pool index {poolIndex} out of range");
            var incoming = pool[poolIndex];
            if (m_Slots.Contains(incoming)) throw new ArgumentException($"object {incoming.objectName} is already active");
            var old = m_Slots[slot];
            Vector3 at = old.Base;
            float yaw = old.transform.eulerAngles.y;
            old.gameObject.SetActive(false);
            incoming.gameObject.SetActive(true);
            m_Slots[slot] = incoming;
            if (!TryPlace(slot, incoming, at, yaw))
            {
                incoming.gameObject.SetActive(false);
                old.gameObject.SetActive(true);
                m_Slots[slot] = old;
                Physics.SyncTransforms();
            }
        }

        bool PlaceRandomly(int slot, Rls3PoolObject obj, Rls3Room room, System.Random rng)
        {
            var surfaces = room.Surfaces;
            float total = surfaces.Sum(s => s.Area);
            for (int t = 0; t < PlaceTries; t++)
            {
                float pick = (float)rng.NextDouble() * total;
                var s = surfaces.First(x => (pick -= x.Area) <= 0f || x == surfaces.Last());
                float yaw = (float)(rng.NextDouble() * 360.0 - 180.0);
                obj.PlaceBase(new Vector3(0f, -50f, 0f), yaw);
                Bounds b = obj.WorldBounds, sb = s.WorldBounds;
                float ux = sb.extents.x - b.extents.x, uz = sb.extents.z - b.extents.z;
                if (ux <= 0f || uz <= 0f) continue;
                var target = new Vector3(sb.center.x + (float)(rng.NextDouble() * 2 - 1) * ux, s.Top,
                                         sb.center.z + (float)(rng.NextDouble() * 2 - 1) * uz);
                if (TryPlace(slot, obj, target, yaw, restore: false)) return true;
            }
            return false;
        }

        /// <summary>Drop `obj` at `target` (bottom centre); keep it if feasible, else restore its pose.</summary>
        bool TryPlace(int slot, Rls3PoolObject obj, Vector3 target, float yawDeg, bool restore = true)
        {
            Vector3 prevPos = obj.transform.position;
            Quaternion prevRot = obj.transform.rotation;
            string reason = Check(obj, target, yawDeg, out string detail, out string surface);
            if (reason == "ok")
            {
                obj.SurfaceName = surface;
                Set(true, "ok", "");
                return true;
            }
            if (restore)
            {
                obj.transform.SetPositionAndRotation(prevPos, prevRot);
                Physics.SyncTransforms();
            }
            Set(false, reason, detail);
            return false;
        }

        string Check(Rls3PoolObject obj, Vector3 target, float yawDeg, out string detail, out string surfaceName)
        {
            detail = ""; surfaceName = "";
            var room = rooms[m_Room];
            obj.PlaceBase(target, yawDeg);
            Bounds b = obj.WorldBounds;
            if (!room.Inside(b)) { detail = $"target {target} outside the room"; return "out_of_bounds"; }

            // landing: highest hit under the footprint (own colliders and the other active objects
            // ignored: a footprint over a neighbour lands on the surface and fails as overlap)
            float hx = b.extents.x * 0.9f, hz = b.extents.z * 0.9f, top = float.NegativeInfinity;
            foreach (var p in new[] { Vector2.zero, new Vector2(hx, hz), new Vector2(-hx, hz), new Vector2(hx, -hz), new Vector2(-hx, -hz) })
            {
                var origin = new Vector3(target.x + p.x, target.y + Snap, target.z + p.y);
                foreach (var hit in Physics.RaycastAll(origin, Vector3.down, 50f, Physics.DefaultRaycastLayers, QueryTriggerInteraction.Ignore))
                    if (!obj.Owns(hit.collider) && !IsActiveObject(hit.collider)) top = Mathf.Max(top, hit.point.y);
            }
            if (float.IsNegativeInfinity(top)) { detail = "nothing under the object"; return "off_surface"; }
            var surface = room.Surfaces.FirstOrDefault(s => Mathf.Abs(s.Top - top) <= SurfaceTol && s.Contains(target.x, target.z, b.extents.x, b.extents.z));
            if (surface == null) { detail = $"lands at y={top:F3} on no designated surface"; return "off_surface"; }
            obj.PlaceBase(new Vector3(target.x, surface.Top, target.z), yawDeg);

            // overlap with furniture and the other active objects
            foreach (var mine in obj.Colliders)
            {
                foreach (var other in Physics.OverlapBox(mine.bounds.center, mine.bounds.extents, Quaternion.identity,
                                                         Physics.AllLayers, QueryTriggerInteraction.Ignore))
                {
                    if (obj.Owns(other)) continue;
                    if (Physics.ComputePenetration(mine, mine.transform.position, mine.transform.rotation,
                                                   other, other.transform.position, other.transform.rotation,
                                                   out _, out float depth) && depth > PenetrationTol)
                    {
                        detail = $"penetrates {other.name} by {depth * 100f:F1} cm";
                        return "overlap";
                    }
                }
            }

            // visibility: centre inside the frame and in the line of sight
            Vector3 c = obj.WorldBounds.center;
            Vector3 v = bridgeCamera.WorldToViewportPoint(c);
            if (v.z <= bridgeCamera.nearClipPlane || v.x < ViewportMargin || v.x > 1f - ViewportMargin || v.y < ViewportMargin || v.y > 1f - ViewportMargin)
            { detail = "outside the frame"; return "not_visible"; }
            Vector3 from = bridgeCamera.transform.position;
            if (Physics.Raycast(from, (c - from).normalized, out RaycastHit first, Vector3.Distance(from, c) + 1f,
                                Physics.DefaultRaycastLayers, QueryTriggerInteraction.Ignore) && !obj.Owns(first.collider))
            { detail = $"occluded by {first.collider.name}"; return "not_visible"; }

            surfaceName = surface.surfaceName;
            return "ok";
        }

        // -- answer ------------------------------------------------------------------------------
        void SetAnswer(int seq, string op, int code)
        {
            m_Seq = seq; m_Op = op; m_OpCode = code;
            m_Valid = true; m_Reason = "ok"; m_Detail = ""; m_Error = null; m_Rendered = false;
        }

        void Set(bool valid, string reason, string detail) { m_Valid = valid; m_Reason = reason; m_Detail = detail; }

        bool IsActiveObject(Collider c) => m_Slots.Any(s => s != null && s.Owns(c));

        void RequestRender() { cameraSensor.Sensor.RequestRender(); m_Rendered = true; }

        int CheckSlot(int slot)
        {
            if (m_Room < 0) throw new InvalidOperationException("no scene loaded: LOAD first");
            if (slot < 0 || slot > 2) throw new ArgumentException($"slot must be 0, 1 or 2, got {slot}");
            return slot;
        }

        string MetadataJson()
        {
            var j = new Rls3Json().BeginObject()
                .Key("format").Value(Format)
                .Key("seq").Value(m_Seq)
                .Key("op").Value(m_Op)
                .Key("feasibility").BeginObject()
                    .Key("valid").Value(m_Valid).Key("reason").Value(m_Reason).Key("detail").Value(m_Detail)
                .EndObject()
                .Key("rendered").Value(m_Rendered)
                .Key("error").Value(m_Error)
                .Key("scenes").Strings(rooms.Select(r => r.sceneName))
                .Key("pool").Strings(pool.Select(o => o.objectName))
                .Key("state");
            if (m_Room < 0 || m_Slots.Any(s => s == null)) j.Null();
            else
            {
                var room = rooms[m_Room];
                j.BeginObject().Key("scene_index").Value(m_Room).Key("scene_name").Value(room.sceneName).Key("objects").BeginArray();
                foreach (var o in m_Slots) o.WriteJson(j);
                j.EndArray().Key("surfaces").BeginArray();
                foreach (var s in room.Surfaces) s.WriteJson(j);
                j.EndArray().Key("camera").BeginObject()
                    .Key("position").Vec(Rls3Frame.ToRls3(bridgeCamera.transform.position))
                    .Key("rotation").Vec(Rls3Frame.CameraRotation(bridgeCamera.transform))
                    .Key("fov_y").Value(bridgeCamera.fieldOfView)
                    .Key("width").Value(cameraSensor.Sensor.Width)
                    .Key("height").Value(cameraSensor.Sensor.Height)
                    .EndObject()
                    .Key("bounds");
                room.WriteBoundsJson(j);
                j.EndObject();
            }
            return j.EndObject().ToString();
        }

        void CheckBehaviour()
        {
            var bp = GetComponent<BehaviorParameters>();
            if (bp.BehaviorName != "Rls3Arranger" || bp.BrainParameters.VectorObservationSize != 3 ||
                bp.BrainParameters.ActionSpec.NumContinuousActions != ActionSize || bp.BrainParameters.ActionSpec.NumDiscreteActions != 0)
                Debug.LogError("rls3: BehaviorParameters must be name Rls3Arranger, vector observation size 3, " +
                               $"{ActionSize} continuous actions and no discrete branches (see bridges/unity/README.md)");
            if (MaxStep != 0) Debug.LogError("rls3: set the Agent's Max Step to 0 (the episode never ends on the Unity side)");
        }

        /// <summary>Integer value of a player command-line flag, e.g. --rls3-image-size 224.</summary>
        public static int CommandLineInt(string flag, int fallback)
        {
            var args = Environment.GetCommandLineArgs();
            for (int i = 0; i < args.Length - 1; i++)
                if (args[i] == flag && int.TryParse(args[i + 1], out int v) && v >= 8) return v;
            return fallback;
        }
    }
}
