// Unity (left-handed, y up) <-> rls3 world frame (right-handed, z up, metres, radians).
using UnityEngine;

namespace Rls3.Bridge
{
    public static class Rls3Frame
    {
        /// <summary>(x, y, z)_rls3 = (x, z, y)_unity.</summary>
        public static Vector3 ToRls3(Vector3 u) => new Vector3(u.x, u.z, u.y);

        /// <summary>(x, y, z)_unity = (x, z, y)_rls3 (the same swap; it is its own inverse).</summary>
        public static Vector3 FromRls3(float x, float y, float z) => new Vector3(x, z, y);

        /// <summary>Yaw about rls3 +z (counter-clockwise from above) of a Unity rotation about +y.</summary>
        public static float YawToRls3(float eulerYDegrees)
        {
            float r = -eulerYDegrees * Mathf.Deg2Rad;
            return Mathf.Atan2(Mathf.Sin(r), Mathf.Cos(r)); // wrapped to (-pi, pi]
        }

        public static float YawFromRls3(float yawRadians) => -yawRadians * Mathf.Rad2Deg;

        /// <summary>rls3 Camera rotation (roll, pitch, yaw): forward = (cos p cos y, cos p sin y, sin p).</summary>
        public static Vector3 CameraRotation(Transform t)
        {
            Vector3 f = ToRls3(t.forward).normalized;
            return new Vector3(0f, Mathf.Asin(Mathf.Clamp(f.z, -1f, 1f)), Mathf.Atan2(f.y, f.x));
        }
    }
}
