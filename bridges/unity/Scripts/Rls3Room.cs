// One rls3 scene: a root GameObject holding furniture, designated surfaces, lights and a camera pose.
using UnityEngine;

namespace Rls3.Bridge
{
    /// <summary>The Agent activates one room at a time (LOAD). Surfaces are the Rls3Surface
    /// components under this root; the camera template gives the pose and vertical field of view that
    /// the bridge camera takes on when the room is loaded (disable the template camera itself).</summary>
    public class Rls3Room : MonoBehaviour
    {
        public string sceneName = "kitchen";
        public Camera cameraTemplate;
        [Tooltip("Room box in Unity world coordinates; objects must stay inside it.")]
        public Vector3 boundsMin = new Vector3(-2.5f, 0f, -2f);
        public Vector3 boundsMax = new Vector3(2.5f, 2.7f, 2f);

        public Rls3Surface[] Surfaces => GetComponentsInChildren<Rls3Surface>(false);

        public bool Inside(Bounds b) =>
            b.min.x >= boundsMin.x && b.max.x <= boundsMax.x && b.min.z >= boundsMin.z && b.max.z <= boundsMax.z &&
            b.min.y >= boundsMin.y - 1e-3f && b.max.y <= boundsMax.y;

        public void WriteBoundsJson(Rls3Json j)
        {
            Vector3 a = Rls3Frame.ToRls3(boundsMin), b = Rls3Frame.ToRls3(boundsMax);
            j.BeginArray().Vec(Vector3.Min(a, b)).Vec(Vector3.Max(a, b)).EndArray();
        }
    }
}
