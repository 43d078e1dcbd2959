// One object of the pool (the paper's nine): colliders for the checks, renderers for the camera.
using UnityEngine;

namespace Rls3.Bridge
{
    /// <summary>Needs primitive or convex mesh colliders (Physics.ComputePenetration requires one
    /// convex side) and no dynamic Rigidbody. Inactive objects are parked with SetActive(false).</summary>
    public class Rls3PoolObject : MonoBehaviour
    {
        public string objectName = "mug";

        /// <summary>Name of the Rls3Surface it stands on (set by the Agent).</summary>
        public string SurfaceName { get; set; } = "";

        public Collider[] Colliders => GetComponentsInChildren<Collider>(false);

        /// <summary>World AABB of all colliders (SyncTransforms first after moving).</summary>
        public Bounds WorldBounds
        {
            get
            {
                Collider[] cs = Colliders;
                Bounds b = cs.Length > 0 ? cs[0].bounds : new Bounds(transform.position, Vector3.zero);
                for (int i = 1; i < cs.Length; i++) b.Encapsulate(cs[i].bounds);
                return b;
            }
        }

        /// <summary>Bottom centre of the AABB (what the Agent places on a surface).</summary>
        public Vector3 Base
        {
            get { Bounds b = WorldBounds; return new Vector3(b.center.x, b.min.y, b.center.z); }
        }

        public bool Owns(Collider c) => c != null && c.transform.IsChildOf(transform);

        /// <summary>Move so the AABB's bottom centre lands at `target` with yaw `yawDeg` (Unity y).</summary>
        public void PlaceBase(Vector3 target, float yawDeg)
        {
            transform.rotation = Quaternion.Euler(0f, yawDeg, 0f);
            Physics.SyncTransforms();
            transform.position += target - Base;
            Physics.SyncTransforms();
        }

        /// <summary>The rls3 ObjectPose record: AABB centre, rotation (0, 0, yaw), surface, AABB size.</summary>
        public void WriteJson(Rls3Json j)
        {
            j.BeginObject()
                .Key("name").Value(objectName)
                .Key("position").Vec(Rls3Frame.ToRls3(WorldBounds.center))
                .Key("rotation").Vec(new Vector3(0f, 0f, Rls3Frame.YawToRls3(transform.eulerAngles.y)))
                .Key("surface").Value(SurfaceName)
                .Key("size").Vec(Rls3Frame.ToRls3(WorldBounds.size))
                .EndObject();
        }
    }
}
