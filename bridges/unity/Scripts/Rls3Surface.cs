// A designated support surface: objects may only stand on these.
using UnityEngine;

namespace Rls3.Bridge
{
    /// <summary>Put on a GameObject with a BoxCollider whose top face is the usable area (axis-aligned
    /// in the world: furniture yaw in multiples of 90 degrees). The name follows the embedded
    /// simulator's convention "furnitureId/k", e.g. "counter/0".</summary>
    [RequireComponent(typeof(BoxCollider))]
    public class Rls3Surface : MonoBehaviour
    {
        public string surfaceName = "furniture/0";

        public Bounds WorldBounds => GetComponent<BoxCollider>().bounds;

        /// <summary>Height (Unity y) of the top face.</summary>
        public float Top => WorldBounds.max.y;

        public float Area => WorldBounds.size.x * WorldBounds.size.z;

        /// <summary>True if a footprint of half extents (hx, hz) centred at (x, z) lies on the top face.</summary>
        public bool Contains(float x, float z, float hx, float hz)
        {
            Bounds b = WorldBounds;
            return Mathf.Abs(x - b.center.x) <= b.extents.x - hx && Mathf.Abs(z - b.center.z) <= b.extents.z - hz;
        }

        /// <summary>The rls3 Surface record: centre of the top face, size (x, y, thickness).</summary>
        public void WriteJson(Rls3Json j)
        {
            Bounds b = WorldBounds;
            j.BeginObject()
                .Key("name").Value(surfaceName)
                .Key("center").Vec(Rls3Frame.ToRls3(new Vector3(b.center.x, b.max.y, b.center.z)))
                .Key("size").Vec(new Vector3(b.size.x, b.size.z, b.size.y))
                .EndObject();
        }
    }
}
